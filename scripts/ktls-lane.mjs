// Runs the kTLS-lane tests (dist/**/*.ktls-test.js) on a kernel with kernel TLS: this one if it has it, else (or with --kernel) a User-Mode Linux guest of our own build.
// Usage: node scripts/ktls-lane.mjs [--kernel 6.1|6.12] [node --test options] [test files | --except FILE...]
//        node scripts/ktls-lane.mjs [--kernel 6.1|6.12] --run SCRIPT [ARGS...]
import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, statSync } from 'node:fs';
import { constants as osc } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BOOTED_MARK, DEFAULT_SERIES, consoleTail, guestKernel, guestScript, knownSeries } from './ktls-lane/guest.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const TIMEOUT_S = Number(process.env.IRONSOCKET_KTLS_TIMEOUT_S ?? 3600);
// From the kernel's start to its init's first line (about 6 s on a quiet machine); a guest that hangs before that fails.
const BOOT_TIMEOUT_S = Number(process.env.IRONSOCKET_UML_BOOT_TIMEOUT_S ?? 300);
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

// `--kernel SERIES` (anywhere, also after --run SCRIPT) picks the guest's kernel and is taken out of the arguments.
function laneArgs(argv) {
  const rest = [];
  let series;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--kernel' || a.startsWith('--kernel=')) {
      series = a === '--kernel' ? argv[++i] : a.slice('--kernel='.length);
      if (!series) die('--kernel needs a series: --kernel 6.1 or --kernel 6.12');
    } else rest.push(a);
  }
  const known = knownSeries(ROOT);
  if (series !== undefined && !known.includes(series))
    die(`--kernel ${series}: this tree builds ${known.join(' and ')} (scripts/uml-kernel/xstate-SERIES.patch)`);
  return { series, rest };
}

// `--run SCRIPT ARGS...` runs one node script (a benchmark, say) on the kTLS kernel instead of the tests.
function runArgs(argv) {
  const at = argv.indexOf('--run');
  if (at < 0) return undefined;
  const [script, ...rest] = argv.slice(at + 1);
  if (!script) die('--run needs a script: node scripts/ktls-lane.mjs --run SCRIPT [ARGS...]');
  if (!existsSync(path.resolve(ROOT, script))) die(`script not found: ${script}`);
  return [path.resolve(ROOT, script), ...rest];
}

// Split the pass-through args into test files and node --test options; `--except FILE` leaves FILE out of the
// default set (every dist/**/*.ktls-test.js), for CI to run that file in its other guest.
function testArgs(argv) {
  const files = [];
  const opts = [];
  const except = new Set();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--except') {
      if (!argv[i + 1]) die('--except needs a test file');
      except.add(path.relative(ROOT, path.resolve(argv[++i])));
      continue;
    }
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
    for (const f of except) {
      if (!files.includes(f)) die(`--except ${f}: not a kTLS-lane test file`);
      files.splice(files.indexOf(f), 1);
    }
  } else if (except.size) die('--except applies to the default set only, not beside a list of files');
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

function runInGuest(args, series) {
  const kernel = guestKernel(ROOT, series);
  if (kernel.error) die(kernel.error);
  try {
    accessSync(kernel.path, constants.X_OK);
  } catch {
    die(`the UML kernel ${kernel.path} is missing or not executable`);
  }
  if (ROOT.startsWith('/proc/') || ROOT.startsWith('/sys/') || (ROOT.startsWith('/dev/') && !ROOT.startsWith('/dev/shm/')))
    die(`the repo at ${ROOT} is not visible inside the guest`);

  // Scratch dir on the shared filesystem, visible at boot: not /tmp (the guest mounts a tmpfs there), not /dev (devtmpfs).
  const base = ROOT.startsWith('/dev/') ? '/var/tmp' : path.join(ROOT, '.tmp');
  mkdirSync(base, { recursive: true });
  tmpDir = mkdtempSync(path.join(base, 'ktls-lane-'));
  const statusFile = path.join(tmpDir, 'status');
  const init = path.join(tmpDir, 'init.sh');
  writeFileSync(init, guestScript({ root: ROOT, args, statusFile }), { mode: 0o755 });

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
  say(`booting ${kernel.label}, mem=${mem}, timeout ${TIMEOUT_S} s`);
  const started = Date.now();
  const tail = consoleTail();
  // The guest fails: repeat its last console lines (a panic, a failed mount), then the verdict.
  const fail = (msg, code = 1) => {
    const lines = tail.lines();
    say(lines.length ? `the guest's last ${lines.length} console lines:` : 'the guest printed nothing on its console');
    for (const l of lines) process.stderr.write(`  | ${l}\n`);
    die(msg, code);
  };
  ownGroup = true;
  child = spawn(kernel.path, umlArgs, {
    cwd: tmpDir,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TMPDIR: existsSync('/dev/shm') ? '/dev/shm' : tmpDir },
  });
  let booted = false;
  const bootTimer = setTimeout(() => {
    if (booted) return;
    say(`the guest did not reach its init within ${BOOT_TIMEOUT_S} s (IRONSOCKET_UML_BOOT_TIMEOUT_S); killing it`);
    timedOut = true;
    killTree();
    setTimeout(() => fail(`the guest did not boot within ${BOOT_TIMEOUT_S} s`, 124), 10_000).unref();
  }, BOOT_TIMEOUT_S * 1000);
  // The guest console turns \n into \r\n; drop the \r.
  const relay = (to) => (b) => {
    const text = b.toString('utf8').replace(/\r/g, '');
    tail.push(text);
    if (!booted && tail.lines().some((l) => l.startsWith(BOOTED_MARK))) {
      booted = true;
      clearTimeout(bootTimer);
    }
    to.write(text);
  };
  child.stdout.on('data', relay(process.stdout));
  child.stderr.on('data', relay(process.stderr));
  const timer = withTimeout('the UML guest');
  child.on('error', (e) => {
    clearTimeout(timer);
    clearTimeout(bootTimer);
    die(`could not start ${kernel.path}: ${e.message}`);
  });
  // Helper processes still holding the console pipe after UML itself exited must not keep us waiting.
  child.on('exit', () => setTimeout(killTree, 5_000).unref());
  child.on('close', (code, signal) => {
    clearTimeout(timer);
    clearTimeout(bootTimer);
    const secs = ((Date.now() - started) / 1000).toFixed(1);
    const status = existsSync(statusFile) ? readFileSync(statusFile, 'utf8').trim() : '';
    const how = signal ? `signal ${signal}` : `exit code ${code}`;
    if (timedOut)
      fail(booted ? `the UML guest timed out after ${TIMEOUT_S} s and was killed (${how})` : `the guest did not boot within ${BOOT_TIMEOUT_S} s (${how})`, 124);
    if (status.startsWith('setup-failed: ')) fail(`guest setup failed: ${status.slice(14)} (UML ${how}, ${secs} s)`);
    const m = /^rc (\d+)$/.exec(status);
    if (!m) fail(`the guest ${booted ? 'never reported the exit code of what it ran' : 'did not boot'} (UML ${how} after ${secs} s)`);
    const rc = Number(m[1]);
    say(`guest finished in ${secs} s; exit code ${rc}`);
    cleanup();
    process.exit(rc);
  });
}

if (!(TIMEOUT_S > 0)) die(`IRONSOCKET_KTLS_TIMEOUT_S must be a positive number of seconds, not ${process.env.IRONSOCKET_KTLS_TIMEOUT_S}`);
if (!(BOOT_TIMEOUT_S > 0)) die(`IRONSOCKET_UML_BOOT_TIMEOUT_S must be a positive number of seconds, not ${process.env.IRONSOCKET_UML_BOOT_TIMEOUT_S}`);
const { series, rest } = laneArgs(process.argv.slice(2));
const args = runArgs(rest) ?? testArgs(rest);
// An explicit --kernel always boots that kernel; without it, a host kernel with kTLS runs the lane itself.
if (series === undefined && process.env.IRONSOCKET_KTLS_FORCE_UML !== '1' && hostHasKtls()) runOnHost(args);
else runInGuest(args, series ?? DEFAULT_SERIES);
