// Runs the kTLS-lane tests (dist/**/*.ktls-test.js) on a kernel with kernel TLS: this one if it has it, else a User-Mode Linux guest.
import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync, statSync } from 'node:fs';
import { constants as osc } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MODULES = ['tls', 'ctr', 'ghash-generic', 'gcm', 'ccm', 'chacha_generic', 'poly1305_generic', 'chacha20poly1305'];
const TIMEOUT_S = Number(process.env.IRONSOCKET_KTLS_TIMEOUT_S ?? 3600);
const say = (msg) => process.stderr.write(`ktls-lane: ${msg}\n`);
let tmpDir = null;
let child = null;
let timedOut = false;
let ownGroup = false; // the UML child leads its own process group

function die(msg, code = 1) {
  say(`FAIL: ${msg}`);
  cleanup();
  process.exit(code);
}

// All descendants of pid (collected before killing, as they get reparented once their parent dies).
function descendants(pid) {
  const kids = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!kids.has(ppid)) kids.set(ppid, []);
      kids.get(ppid).push(Number(name));
    } catch {
      /* process went away */
    }
  }
  const out = [];
  const todo = [pid];
  while (todo.length)
    for (const k of kids.get(todo.pop()) ?? []) {
      out.push(k);
      todo.push(k);
    }
  return out;
}

function killTree() {
  if (!child?.pid) return;
  const alive = child.exitCode === null && child.signalCode === null;
  const pids = alive ? [child.pid, ...descendants(child.pid)] : [];
  if (ownGroup) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      /* group already gone */
    }
  }
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

function cleanup() {
  killTree();
  if (tmpDir) {
    try {
      rmSync(tmpDir, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
    tmpDir = null;
  }
}

process.on('exit', cleanup);
for (const [sig, n] of [
  ['SIGINT', 2],
  ['SIGTERM', 15],
  ['SIGHUP', 1],
]) {
  process.on(sig, () => {
    say(`got ${sig}, stopping`);
    cleanup();
    process.exit(128 + n);
  });
}

// `--run SCRIPT ARGS...` runs one node script (a benchmark, say) on the kTLS kernel instead of the tests.
function runArgs() {
  const at = process.argv.indexOf('--run');
  if (at < 0) return undefined;
  const [script, ...rest] = process.argv.slice(at + 1);
  if (!script) die('--run needs a script: node scripts/ktls-lane.mjs --run SCRIPT [ARGS...]');
  if (!existsSync(path.resolve(ROOT, script))) die(`script not found: ${script}`);
  return [path.resolve(ROOT, script), ...rest];
}

// Split the pass-through args into test files and node --test options.
function testArgs() {
  const files = [];
  const opts = [];
  for (const a of process.argv.slice(2)) {
    const isFile = !a.startsWith('-') && (/\.[cm]?js$/.test(a) || (existsSync(a) && statSync(a).isFile()));
    if (isFile) files.push(path.resolve(a));
    else opts.push(a);
  }
  if (files.length === 0) {
    const walk = (dir) =>
      readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
        const p = path.join(dir, e.name);
        return e.isDirectory() ? walk(p) : e.name.endsWith('.ktls-test.js') ? [path.relative(ROOT, p)] : [];
      });
    if (existsSync(path.join(ROOT, 'dist'))) files.push(...walk(path.join(ROOT, 'dist')).sort());
  }
  for (const f of files) if (!existsSync(path.resolve(ROOT, f))) die(`test file not found: ${f}`);
  if (files.length === 0) die('no kTLS-lane test files (dist/**/*.ktls-test.js); did the build run?');
  // Guards against a hang, not a speed check: the one-CPU guest's speed varies about 2x from run to run (the
  // upgrade file took 424 s in one lane run and over 900 s in the next, every test passing).
  return ['--test', '--test-concurrency=1', '--test-timeout=1800000', ...opts, ...files];
}

function hostHasKtls() {
  if (existsSync('/proc/net/tls_stat')) return true;
  spawnSync('modprobe', ['tls'], { stdio: 'ignore', timeout: 10_000 });
  return existsSync('/proc/net/tls_stat');
}

function withTimeout(what) {
  return setTimeout(() => {
    say(`${what} did not finish within ${TIMEOUT_S} s (IRONSOCKET_KTLS_TIMEOUT_S); killing it`);
    timedOut = true;
    killTree();
    setTimeout(() => die(`timed out after ${TIMEOUT_S} s`, 124), 10_000).unref();
  }, TIMEOUT_S * 1000);
}

function runOnHost(args) {
  const stat = readFileSync('/proc/net/tls_stat', 'utf8').replace(/\s+/g, ' ').trim();
  say(`kernel ${spawnSync('uname', ['-r'], { encoding: 'utf8' }).stdout.trim()} has kTLS; running on the host. tls_stat: ${stat}`);
  child = spawn(process.execPath, args, { cwd: ROOT, stdio: 'inherit', env: { ...process.env, IRONSOCKET_KTLS_LANE: 'host' } });
  const timer = withTimeout('the kTLS tests');
  child.on('exit', (code, signal) => {
    clearTimeout(timer);
    if (timedOut) die(`the kTLS tests timed out after ${TIMEOUT_S} s`, 124);
    process.exit(code ?? 128 + (osc.signals[signal] ?? 1));
  });
}

function findUml() {
  const want = process.env.IRONSOCKET_UML || 'linux.uml';
  const candidates = want.includes('/')
    ? [want]
    : (process.env.PATH ?? '')
        .split(':')
        .concat('/usr/bin')
        .map((d) => path.join(d, want));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      if (statSync(c).isFile()) return c;
    } catch {
      /* next */
    }
  }
  die(
    `no kTLS here and no User-Mode Linux kernel to boot one: ${want} not found or not executable ` +
      '(install the Debian package user-mode-linux, or set IRONSOCKET_UML=/path/to/linux.uml)',
  );
}

const sq = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

function guestScript(args, modRoot, kver, statusFile) {
  const env = {
    PATH: process.env.PATH || '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: process.env.HOME || '/root',
    LANG: 'C.UTF-8',
    TMPDIR: '/tmp',
    IRONSOCKET_KTLS_LANE: 'uml',
  };
  for (const [k, v] of Object.entries(process.env)) {
    if ((/^IRONSOCKET_/.test(k) && k !== 'IRONSOCKET_KTLS_LANE') || ['CI', 'NODE_OPTIONS', 'NO_COLOR', 'FORCE_COLOR'].includes(k)) env[k] = v;
  }
  // The guest console is a tty: keep escape codes out of logs unless our own stdout is a terminal.
  if (!process.stdout.isTTY && env.FORCE_COLOR === undefined) env.NO_COLOR = '1';
  const under = (dir) => ROOT === dir || ROOT.startsWith(`${dir}/`);
  // tmpfs over /tmp, /run and /dev/shm, unless the repo lives there (then show the host's directory instead).
  const tmpfs = (dir) =>
    under(dir)
      ? dir === '/dev/shm'
        ? `mount -t hostfs hostfs /dev/shm -o /dev/shm || fail "mount hostfs /dev/shm"`
        : ':'
      : `mount -t tmpfs tmpfs ${dir} || fail "mount tmpfs ${dir}"`;
  return `#!/bin/sh
# Generated by scripts/ktls-lane.mjs: PID 1 of the User-Mode Linux guest that runs the kTLS-lane tests.
S=${sq(statusFile)}
stop() { sync; halt -f || poweroff -f; echo o > /proc/sysrq-trigger; exit 1; }
fail() { echo "ktls-lane(guest): setup failed: $*"; echo "setup-failed: $*" > "$S"; stop; }
${Object.entries(env)
  .filter(([k]) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
  .map(([k, v]) => `export ${k}=${sq(v)}`)
  .join('\n')}
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev || fail "mount devtmpfs /dev"
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts || fail "mount /dev/pts"
${tmpfs('/tmp')}
${tmpfs('/run')}
${tmpfs('/dev/shm')}
ip link set lo up || fail "ip link set lo up"
modprobe -a -d ${sq(modRoot)} -S ${sq(kver)} ${MODULES.join(' ')} || fail "modprobe of ${MODULES.join(' ')} failed"
[ -r /proc/net/tls_stat ] || fail "/proc/net/tls_stat absent after loading tls: the guest kernel has no kTLS"
echo "ktls-lane(guest): kernel $(uname -r); tls_stat: $(tr -s ' \\t\\n' ' ' < /proc/net/tls_stat)"
cd ${sq(ROOT)} || fail "cd ${ROOT}"
${sq(process.execPath)} ${args.map(sq).join(' ')}
echo "rc $?" > "$S"
stop
`;
}

function runInGuest(args) {
  const uml = findUml();
  const ver = spawnSync(uml, ['--version'], { encoding: 'utf8', timeout: 30_000 });
  const kver = process.env.IRONSOCKET_UML_KVER || (ver.stdout ?? '').trim().split(/\s+/).pop();
  if (ver.status !== 0 && !process.env.IRONSOCKET_UML_KVER) die(`${uml} --version failed (${ver.error?.message ?? `exit ${ver.status}`}); is it a UML kernel?`);
  const modDir = process.env.IRONSOCKET_UML_MODULES || `/usr/lib/uml/modules/${kver}`;
  if (!existsSync(path.join(modDir, 'modules.dep')))
    die(`UML kernel modules for ${kver} not found in ${modDir} (package user-mode-linux; or set IRONSOCKET_UML_MODULES)`);
  if (ROOT.startsWith('/proc/') || ROOT.startsWith('/sys/') || (ROOT.startsWith('/dev/') && !ROOT.startsWith('/dev/shm/')))
    die(`the repo at ${ROOT} is not visible inside the guest`);

  // Scratch dir on the shared filesystem, visible at boot: not /tmp (the guest mounts a tmpfs there), not /dev (devtmpfs).
  const base = ROOT.startsWith('/dev/') ? '/var/tmp' : path.join(ROOT, '.tmp');
  mkdirSync(base, { recursive: true });
  tmpDir = mkdtempSync(path.join(base, 'ktls-lane-'));
  mkdirSync(path.join(tmpDir, 'mods', 'lib', 'modules'), { recursive: true });
  symlinkSync(path.resolve(modDir), path.join(tmpDir, 'mods', 'lib', 'modules', kver));
  const statusFile = path.join(tmpDir, 'status');
  const init = path.join(tmpDir, 'init.sh');
  writeFileSync(init, guestScript(args, path.join(tmpDir, 'mods'), kver, statusFile), { mode: 0o755 });

  const mem = process.env.IRONSOCKET_UML_MEM || '2G';
  const umlArgs = [
    `mem=${mem}`,
    'root=/dev/root',
    'rootfstype=hostfs',
    'rootflags=/',
    'rw',
    `init=${init}`,
    'con=null',
    'con0=null,fd:1',
    `umid=ktls-lane-${process.pid}`,
    `uml_dir=${tmpDir}`,
    'quiet',
  ];
  say(`no kTLS in this kernel; booting ${uml} (kernel ${kver}, mem=${mem}, timeout ${TIMEOUT_S} s)`);
  const started = Date.now();
  ownGroup = true;
  child = spawn(uml, umlArgs, {
    cwd: tmpDir,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TMPDIR: existsSync('/dev/shm') ? '/dev/shm' : tmpDir },
  });
  // The guest console turns \n into \r\n; drop the \r.
  child.stdout.on('data', (b) => process.stdout.write(b.toString('utf8').replace(/\r/g, '')));
  child.stderr.on('data', (b) => process.stderr.write(b.toString('utf8').replace(/\r/g, '')));
  const timer = withTimeout('the UML guest');
  child.on('error', (e) => {
    clearTimeout(timer);
    die(`could not start ${uml}: ${e.message}`);
  });
  // Helper processes still holding the console pipe after UML itself exited must not keep us waiting.
  child.on('exit', () => setTimeout(killTree, 5_000).unref());
  child.on('close', (code, signal) => {
    clearTimeout(timer);
    const secs = ((Date.now() - started) / 1000).toFixed(1);
    const status = existsSync(statusFile) ? readFileSync(statusFile, 'utf8').trim() : '';
    const how = signal ? `signal ${signal}` : `exit code ${code}`;
    if (timedOut) die(`the UML guest timed out after ${TIMEOUT_S} s and was killed (${how})`, 124);
    if (status.startsWith('setup-failed: ')) die(`guest setup failed: ${status.slice(14)} (UML ${how}, ${secs} s)`);
    const m = /^rc (\d+)$/.exec(status);
    if (!m) die(`the guest never reported the tests' exit code (UML ${how} after ${secs} s; see the console output above)`);
    const rc = Number(m[1]);
    say(`guest finished in ${secs} s; tests exited with ${rc}`);
    cleanup();
    process.exit(rc);
  });
}

if (!(TIMEOUT_S > 0)) die(`IRONSOCKET_KTLS_TIMEOUT_S must be a positive number of seconds, not ${process.env.IRONSOCKET_KTLS_TIMEOUT_S}`);
const args = runArgs() ?? testArgs();
if (process.env.IRONSOCKET_KTLS_FORCE_UML !== '1' && hostHasKtls()) runOnHost(args);
else runInGuest(args);
