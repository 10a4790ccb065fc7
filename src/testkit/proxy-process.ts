// Test support: runs `ironsocket run` as a real child process and talks to it only through its CLI contract.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { StatusSnapshot } from '../core/types.js';

const run = promisify(execFile);
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CLI = path.join(ROOT, 'dist/cli/main.js');
/** Test-only CLI entry that honours IRONSOCKET_FAULT_EXEC_PATH and IRONSOCKET_FAULT_BRIDGE (src/testkit/fault-entry.ts). */
export const FAULT_CLI = path.join(ROOT, 'dist/testkit/fault-entry.js');

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `ironsocket-${prefix}-`));
}

export interface RunningProxy {
  pid: number;
  /** The first listener's port. */
  port: number;
  /** Every listener's port, in config order. */
  ports: number[];
  adminSocket: string;
  /** The proxy's private temporary directory: admin socket, config file, state dir (removed by stop). */
  dir: string;
  child: ChildProcess;
  /** Everything the proxy printed on stdout (JSON logs) so far. */
  logs(): string[];
  /** Everything the proxy printed on stderr (the banner, failures) so far. */
  stderr(): string;
  status(): Promise<StatusSnapshot>;
  /** Open file descriptors of the proxy process right now. */
  fdCount(): number;
  stop(): Promise<number | null>;
  /** kill -9, and resolves once it is gone (its temporary directory stays until stop()). */
  crash(): Promise<void>;
  /** Resolves when a log line matching `re` appears. */
  waitForLog(re: RegExp, timeoutMs?: number): Promise<string>;
}

export interface ProxyOptions {
  backendPort: number;
  args?: string[];
  cert?: { certFile: string; keyFile: string };
  env?: NodeJS.ProcessEnv;
  /** Runs the proxy (and whatever it starts or execs) at this niceness (benchmarks: keep the load generator ahead). */
  nice?: number;
  /** TOML written to a config file passed with --config (flags in `args` still override it). */
  config?: string;
  /** Leave out the default --listen/--backend flags (a config with [[listener]] tables gives them). */
  noListenFlags?: boolean;
  /** A command prefix the proxy runs under, e.g. ['ip', 'netns', 'exec', 'ns1']. */
  wrap?: string[];
  /** Descriptors handed to the proxy as fds 3, 4, ... with LISTEN_FDS/LISTEN_PID set as systemd's socket activation does. */
  activate?: number[];
  /** Their names (LISTEN_FDNAMES), as systemd passes a socket unit's or the fd store's. */
  activateNames?: string[];
  /** Run `ironsocket keeper` (which runs the proxy as its child) instead of `ironsocket run`: `pid` is the keeper's. */
  keeper?: boolean;
  /** The CLI script to run instead of CLI, e.g. FAULT_CLI for injected upgrade faults. */
  entry?: string;
}

/** Pids whose parent is `pid` (zombies included): what a process has left running or uncollected. */
export function childProcesses(pid: number): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(name));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

/** Generates a self-signed certificate with openssl ('ec' = P-256 ECDSA, 'rsa' = RSA 2048). */
export async function makeCert(dir: string, kind: 'ec' | 'rsa'): Promise<{ certFile: string; keyFile: string }> {
  const certFile = path.join(dir, `${kind}-cert.pem`);
  const keyFile = path.join(dir, `${kind}-key.pem`);
  const newkey = kind === 'ec' ? ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'] : ['-newkey', 'rsa:2048'];
  await run('openssl', [
    'req',
    '-x509',
    ...newkey,
    '-nodes',
    '-keyout',
    keyFile,
    '-out',
    certFile,
    '-days',
    '2',
    '-subj',
    '/CN=localhost',
    '-addext',
    'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ]);
  return { certFile, keyFile };
}

export async function startProxyProcess(opts: ProxyOptions): Promise<RunningProxy> {
  const dir = tempDir('proxy');
  const adminSocket = path.join(dir, 'admin.sock');
  const args = [opts.entry ?? CLI, opts.keeper ? 'keeper' : 'run', '--admin-socket', adminSocket];
  if (!opts.noListenFlags) args.push('--listen', '127.0.0.1:0', '--backend', `127.0.0.1:${opts.backendPort}`);
  if (opts.cert) args.push('--cert', opts.cert.certFile, '--key', opts.cert.keyFile);
  if (opts.config !== undefined) {
    const file = path.join(dir, 'ironsocket.toml');
    fs.writeFileSync(file, opts.config);
    args.push('--config', file);
  }
  args.push(...(opts.args ?? []));
  let command = [process.execPath, ...args];
  if (opts.nice) command = ['nice', '-n', String(opts.nice), ...command];
  // LISTEN_PID must be the proxy's own pid: a shell sets it, then execs into node (same pid).
  if (opts.activate) command = ['sh', '-c', 'LISTEN_PID=$$ exec "$0" "$@"', ...command];
  if (opts.wrap) command = [...opts.wrap, ...command];
  const activation = opts.activate
    ? { LISTEN_FDS: String(opts.activate.length), ...(opts.activateNames ? { LISTEN_FDNAMES: opts.activateNames.join(':') } : {}) }
    : {};
  const child = spawn(command[0]!, command.slice(1), {
    env: { ...process.env, IRONSOCKET_STATE_DIR: path.join(dir, 'state'), ...activation, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe', ...(opts.activate ?? [])],
  });
  const lines: string[] = [];
  let stderr = '';
  const watchers: Array<() => void> = [];
  let partial = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    partial += d;
    const parts = partial.split('\n');
    partial = parts.pop()!;
    lines.push(...parts);
    for (const w of watchers.slice()) w();
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
  });
  let stopping = false;
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  // A proxy that dies on its own is the first thing to know when a test fails: say so with its output.
  child.once('exit', (code, signal) => {
    if (stopping) return;
    process.stderr.write(
      `\n[testkit] proxy ${child.pid} exited unexpectedly (code ${code}, signal ${signal})\n--- stderr ---\n${stderr.slice(-4000)}\n--- last log lines ---\n${lines.slice(-30).join('\n')}\n`,
    );
  });

  const waitForLog = (re: RegExp, timeoutMs = 60_000) =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        const hit = lines.find((l) => re.test(l));
        if (hit) {
          watchers.splice(watchers.indexOf(check), 1);
          clearTimeout(t);
          resolve(hit);
        }
      };
      const t = setTimeout(() => {
        watchers.splice(watchers.indexOf(check), 1);
        reject(new Error(`no log line matching ${re} within ${timeoutMs} ms; stderr:\n${stderr}\nstdout:\n${lines.join('\n')}`));
      }, timeoutMs);
      t.unref(); // a proxy that exited must not keep the test process alive until this fires
      watchers.push(check);
      check();
    });

  await Promise.race([
    waitForLog(/"msg":"ready"/),
    exited.then((code) => {
      throw new Error(`proxy exited with ${code} before listening:\n${stderr}`);
    }),
  ]);
  const ports = lines.filter((l) => /"msg":"listening"/.test(l)).map((l) => Number(/"listen":"[^"]*:(\d+)"/.exec(l)![1]));
  const port = ports[0]!;
  return {
    pid: child.pid!,
    port,
    ports,
    adminSocket,
    dir,
    child,
    logs: () => lines.slice(),
    stderr: () => stderr,
    waitForLog,
    fdCount: () => fs.readdirSync(`/proc/${child.pid}/fd`).length,
    async status() {
      const { stdout } = await run(process.execPath, [CLI, 'status', '--json', '--admin-socket', adminSocket]);
      return JSON.parse(stdout) as StatusSnapshot;
    },
    async crash() {
      stopping = true;
      child.kill('SIGKILL');
      await exited;
    },
    async stop() {
      stopping = true;
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(t);
      fs.rmSync(dir, { recursive: true, force: true });
      return code;
    },
  };
}

/** Polls `fn` until it returns true or the time runs out. */
export async function eventually(fn: () => boolean | Promise<boolean>, timeoutMs = 20_000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Runs the CLI (as root, or as `uid` via setpriv) and resolves with its exit code and output. A command that does
 * not end (a proxy that starts instead of refusing) is stopped after 30 s, so the test fails instead of hanging.
 */
export function runCli(args: string[], opts: { uid?: number; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const command =
      opts.uid === undefined
        ? [process.execPath, CLI, ...args]
        : ['setpriv', `--reuid=${opts.uid}`, `--regid=${opts.uid}`, '--clear-groups', process.execPath, CLI, ...args];
    const child = spawn(command[0]!, command.slice(1), { env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    const t = setTimeout(() => child.kill(), 30_000);
    child.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}
