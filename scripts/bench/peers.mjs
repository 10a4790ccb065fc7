// The TLS terminators `npm run bench` compares: how to find each one, read its version, start it on loopback with a
// generated config (same certificate, same backend, TLS 1.3 only, per-connection logging off), read its memory
// (every process it runs), reload it the way its operators do, see which of its processes holds which connection, and
// stop it. Every process started here (old and new workers of a reload too) is killed on exit, whatever happens.
import { execFile, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { CLI, ROOT } from '../../dist/testkit/proxy-process.js';
import { sleep } from './common.mjs';

const run = promisify(execFile);
const TICK_MS = 1000 / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }));
const CPUS = os.cpus().length;
const started = new Set(); // child processes still to kill

function which(names) {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/local/sbin', '/sbin'];
  for (const name of names)
    for (const file of name.startsWith('/') ? [name] : dirs.map((d) => path.join(d, name))) {
      try {
        fs.accessSync(file, fs.constants.X_OK);
        return file;
      } catch {
        /* not here */
      }
    }
  return undefined;
}

async function output(bin, args) {
  try {
    const { stdout, stderr } = await run(bin, args, { timeout: 10_000 });
    return stdout + stderr;
  } catch (e) {
    return `${e.stdout ?? ''}${e.stderr ?? ''}`; // stunnel4 -version exits non-zero
  }
}

// hitch refuses to run its workers as root: give it the Debian package's account, or nobody.
const hitchUser = () => (/^_hitch:/m.test(fs.readFileSync('/etc/passwd', 'utf8')) ? '_hitch' : 'nobody');

export const PEERS = [
  {
    name: 'haproxy',
    bins: ['haproxy'],
    model: `master-worker (-W, as Debian's unit runs it), ${CPUS} threads (nbthread default)`,
    reload: {
      signal: 'SIGUSR2',
      how: "SIGUSR2 to the master (master-worker mode, -W, which is what Debian's haproxy.service runs with -Ws and reloads with kill -USR2): the master re-executes itself (new binary, new config), forks a new worker and soft-stops the old one, which stops listening but keeps serving its established connections until they close (no hard-stop-after set)",
    },
    version: async (bin) => /version (\S+)/i.exec(await output(bin, ['-v']))?.[1],
    command({ bin, dir, port, backendPort, pem }) {
      const cfg = path.join(dir, 'haproxy.cfg');
      // No maxconn: haproxy derives it from ulimit -n (it cannot raise its hard limit here).
      fs.writeFileSync(
        cfg,
        `defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend tls
  bind 127.0.0.1:${port} ssl crt ${pem} ssl-min-ver TLSv1.3
  default_backend plain
backend plain
  server b 127.0.0.1:${backendPort}
`,
      );
      // -W: master-worker, the mode a reload needs (Debian's unit: -Ws; the s only adds sd_notify). -db: foreground.
      return [bin, ['-W', '-db', '-f', cfg]];
    },
  },
  {
    name: 'stunnel',
    bins: ['stunnel4', 'stunnel'],
    model: 'a thread per connection',
    reload: {
      signal: 'SIGHUP',
      how: "SIGHUP (man stunnel4; Debian's stunnel@.service has no ExecReload): the same process re-reads its config and re-binds its listener; established connections keep their threads in that process. No new code is loaded: a new stunnel binary takes a restart, which cuts every connection",
    },
    version: async (bin) => /stunnel (\S+)/.exec(await output(bin, ['-version']))?.[1],
    command({ bin, dir, port, backendPort, pem }) {
      const cfg = path.join(dir, 'stunnel.conf');
      fs.writeFileSync(
        cfg,
        `foreground = yes
pid =
syslog = no
debug = 3
[tls]
accept = 127.0.0.1:${port}
connect = 127.0.0.1:${backendPort}
cert = ${pem}
sslVersionMin = TLSv1.3
`,
      );
      return [bin, [cfg]];
    },
  },
  {
    name: 'hitch',
    bins: ['hitch'],
    model: `${CPUS} worker processes (one per CPU)`,
    reload: {
      signal: 'SIGHUP',
      how: "SIGHUP to the manager (Debian's hitch.service ExecReload): it re-reads the config and forks new workers, which take over the listener; old workers stop accepting and exit once their last connection closes. The manager is not re-executed: the new workers run the old binary too (new config only)",
    },
    version: async (bin) => /hitch (\S+)/.exec(await output(bin, ['--version']))?.[1],
    command({ bin, dir, port, backendPort, pem }) {
      const cfg = path.join(dir, 'hitch.conf');
      // backlog: hitch's default of 100 overflows while the idle test opens 100 connections at once.
      fs.writeFileSync(
        cfg,
        `frontend = "[127.0.0.1]:${port}"
backend = "[127.0.0.1]:${backendPort}"
pem-file = "${pem}"
tls-protos = TLSv1.3
workers = ${CPUS}
backlog = 1024
daemon = off
log-level = 1
${process.getuid() === 0 ? `user = "${hitchUser()}"\n` : ''}`,
      );
      return [bin, ['--config', cfg]];
    },
  },
  {
    name: 'ironsocket',
    bins: [process.execPath],
    model: 'Node.js',
    reload: {
      signal: 'SIGUSR2',
      how: 'SIGUSR2 (or `ironsocket upgrade`): an in-place upgrade, exec of the new code in the same PID; established connections are carried across the exec and served by the new image (generation + 1); the outcome is read from the admin socket (upgrade-result)',
    },
    async version() {
      const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version;
      const commit = (await output('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'])).trim();
      if (!/^[0-9a-f]+$/.test(commit)) return pkg;
      // Plumbing only (reads, never writes the index); dist/ is what runs, and may differ from both.
      const dirty = await run('git', ['-C', ROOT, 'diff-index', '--quiet', 'HEAD', '--', 'src', 'package.json']).then(
        () => false,
        () => true,
      );
      return `${pkg} @ ${commit}${dirty ? ' + uncommitted changes in src' : ''}`;
    },
    command({ bin, dir, port, backendPort, certFile, keyFile, ktls }) {
      const admin = path.join(dir, 'ironsocket-admin.sock');
      // Every bench client connects from 127.0.0.1: lift the per-source limits (a tenth of max_connections by default),
      // which the peers do not have, or the idle-connection row stops at that tenth.
      const config = path.join(dir, 'ironsocket.toml');
      fs.writeFileSync(config, '[limits]\nmax_connections_per_source = 10000\nmax_handshakes_per_source = 10000\n');
      const args = ['run', '--config', config, '--listen', `127.0.0.1:${port}`, '--backend', `127.0.0.1:${backendPort}`, '--cert', certFile, '--key', keyFile];
      args.push('--admin-socket', admin, '--ktls', ktls, '--log-level', 'warn');
      return [bin, [CLI, ...args], { IRONSOCKET_STATE_DIR: path.join(dir, 'ironsocket-state') }, admin];
    },
  },
];

export const findBin = (peer) => which(peer.bins);

/** From a running Iron Socket's `status --json`: its connections per mode ({kernel: n, user: m}) and relay workers. */
export async function ironsocketStatus(admin) {
  const { stdout } = await run(process.execPath, [CLI, 'status', '--json', '--admin-socket', admin], { maxBuffer: 256 << 20 });
  const status = JSON.parse(stdout);
  const modes = {};
  for (const c of status.connections) modes[c.mode] = (modes[c.mode] ?? 0) + 1;
  const relayHeapKiB = (status.memory?.relayHeapKiB ?? []).reduce((n, k) => n + k, 0);
  return { modes, workers: status.workers, relayHeapKiB };
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer().once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const accepts = (port) =>
  new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });

/** All descendants of `pid` (hitch forks workers; listed before any kill, as orphans get reparented). */
function descendants(pid) {
  const kids = new Map();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      kids.set(ppid, [...(kids.get(ppid) ?? []), Number(name)]);
    } catch {
      /* gone meanwhile */
    }
  }
  const out = [];
  for (const todo = [pid]; todo.length;) for (const k of kids.get(todo.pop()) ?? []) (out.push(k), todo.push(k));
  return out;
}

/** A pid with its start time, so that a kill never reaches a later process that reused the number. */
function identify(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return { pid, start: stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] };
  } catch {
    return undefined;
  }
}

function kill(procs, signal) {
  for (const p of procs) {
    if (p && identify(p.pid)?.start === p.start) {
      try {
        process.kill(p.pid, signal);
      } catch {
        /* already gone */
      }
    }
  }
}

const tree = (child) => [child.pid, ...descendants(child.pid)].map(identify);

/** The TCP sockets whose local port is `port`: LISTEN inodes, and the ESTABLISHED ones by their remote port. */
export function socketsOn(port) {
  const listen = new Set();
  const established = new Map();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || parseInt(f[1].split(':')[1], 16) !== port) continue;
      if (f[3] === '0A') listen.add(f[9]);
      else if (f[3] === '01') established.set(parseInt(f[2].split(':')[1], 16), f[9]);
    }
  }
  return { listen, established };
}

/** Which of `pids` holds each socket inode in `inodes` (reads their fd tables): Map inode → pid. */
export function holders(pids, inodes) {
  const out = new Map();
  for (const pid of pids) {
    let fds;
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // gone meanwhile
    }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m && inodes.has(m[1]) && !out.has(m[1])) out.set(m[1], pid);
      } catch {
        /* closed meanwhile */
      }
    }
  }
  return out;
}

/** Whether the process `p` ({pid, start} from `processes()`) is still the same process. */
export const sameProcess = (p) => identify(p.pid)?.start === p.start;
const killTree = (child) => kill(tree(child), 'SIGKILL');

/** Synchronous, for process 'exit': kills whatever peer is still running. */
export function killAllPeers() {
  for (const child of started) killTree(child);
  started.clear();
}

/** Starts `peer` and resolves once its port accepts; throws with its output if it exits or never listens. */
export async function startPeer(peer, ctx) {
  const port = await freePort();
  const [cmd, args, env, admin] = peer.command({ ...ctx, port });
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  started.add(child);
  let out = '';
  const keep = (d) => (out = (out + d).slice(-3000));
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  let exit;
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve((exit = signal ?? `code ${code}`))));
  const deadline = Date.now() + 15_000;
  while (!(await accepts(port))) {
    if (exit || Date.now() > deadline) {
      killTree(child);
      started.delete(child);
      throw new Error(`${exit ? `exited (${exit})` : 'not listening after 15 s'}; its output:\n${out.trim() || '(none)'}`);
    }
    await sleep(50);
  }
  return {
    port,
    admin,
    pid: child.pid,
    /** The peer's processes now, each as {pid, start} (start time tells a reused pid apart). */
    processes: () => tree(child).filter(Boolean),
    signal: (sig) => process.kill(child.pid, sig),
    /** Resident memory of the peer's processes, KiB (VmRSS of the main pid plus every descendant). */
    rssKiB() {
      let kib = 0;
      for (const pid of [child.pid, ...descendants(child.pid)]) {
        try {
          kib += Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
        } catch {
          /* gone meanwhile */
        }
      }
      return kib;
    },
    /** CPU time (user + system) the peer's processes have used so far, ms. */
    cpuMs() {
      let ticks = 0;
      for (const pid of [child.pid, ...descendants(child.pid)]) {
        try {
          const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
          const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
          ticks += Number(f[11]) + Number(f[12]); // utime, stime: all threads
        } catch {
          /* gone meanwhile */
        }
      }
      return ticks * TICK_MS;
    },
    alive: () => exit === undefined,
    output: () => out.trim(),
    async stop() {
      const procs = tree(child);
      kill(procs, 'SIGTERM');
      await Promise.race([exited, sleep(5000)]);
      kill(procs, 'SIGKILL'); // workers that outlived their parent, or a peer that ignored SIGTERM
      started.delete(child);
    },
  };
}
