// Fuzz run for hostile handshakes: thousands of malformed inputs against the built proxy, then proof it still serves, leaks no fd and stays alive.
// Usage: npm run fuzz -- [--inputs N] [--seed S] [--ktls off|auto|require] [--concurrency C] [--only I]
// Every input i is generated from (seed, i) alone, so `--seed S --only I` replays one input exactly.
// Exits 1 on a proxy crash, a good client not served byte-exact, a valid input refused, or an fd leak.
import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { promisify, parseArgs } from 'node:util';
import { echoBackend } from '../dist/testkit/backends.js';
import { captureClientHello, oneByteTransport } from '../dist/testkit/hostile.js';
import { HELLOS, KINDS, WHEEL, rngFor } from './fuzz/inputs.mjs';
import { CLI, tempDir } from '../dist/testkit/proxy-process.js';

const run = promisify(execFile);
// Inside the kTLS lane's User-Mode Linux guest (1 CPU, Node ~10x slower): fewer inputs at once, every wait x10.
const GUEST = process.env.IRONSOCKET_KTLS_LANE === 'uml';
const SLOW = GUEST ? 10 : 1;
const usage = (msg) => {
  console.error(`fuzz: ${msg}\nusage: npm run fuzz -- [--inputs N] [--seed S] [--ktls off|auto|require] [--concurrency C] [--only I]`);
  process.exit(2);
};
let opt;
try {
  ({ values: opt } = parseArgs({
    args: process.argv.slice(2),
    options: {
      inputs: { type: 'string', default: '10000' },
      seed: { type: 'string' },
      ktls: { type: 'string', default: 'auto' },
      concurrency: { type: 'string', default: GUEST ? '16' : '64' },
      only: { type: 'string' },
    },
  }));
} catch (e) {
  usage(e.message);
}
const N = Number(opt.inputs);
const CONC = Number(opt.concurrency);
const SEED = opt.seed !== undefined ? Number(opt.seed) >>> 0 : crypto.randomInt(2 ** 32);
const ONLY = opt.only !== undefined ? Number(opt.only) : undefined;
if (!Number.isInteger(N) || N < 1) usage(`--inputs: expected a positive integer, got ${opt.inputs}`);
if (!Number.isInteger(CONC) || CONC < 1) usage(`--concurrency: expected a positive integer, got ${opt.concurrency}`);
if (opt.seed !== undefined && !/^\d+$/.test(opt.seed)) usage(`--seed: expected a non-negative integer, got ${opt.seed}`);
if (ONLY !== undefined && !(Number.isInteger(ONLY) && ONLY >= 0)) usage(`--only: expected an input index, got ${opt.only}`);
if (!['auto', 'off', 'require'].includes(opt.ktls)) usage(`--ktls: expected auto, off or require, got ${opt.ktls}`);

/** Time a raw input may take before the client gives up and closes (the proxy's own handshake timeout is 10 s). */
const INPUT_TIMEOUT_MS = 2000 * SLOW;
/** Legal inputs (a ClientHello in 1-byte segments, a renegotiation attempt) get longer: they do real handshakes under load. */
const REAL_CLIENT_TIMEOUT_MS = 8000 * SLOW;
const FD_TOLERANCE = 4;
const RSS_LIMIT_MIB = 200;

// ---------------------------------------------------------------- drivers

/** Sends raw bytes; ends when the proxy closes or after INPUT_TIMEOUT_MS. Reports whether an alert record came back. */
function driveRaw(port, { bytes, fin }) {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    let got = Buffer.alloc(0);
    let settled = false;
    const done = (end) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ end, alert: hasAlert(got) });
    };
    const timer = setTimeout(() => done('timeout'), INPUT_TIMEOUT_MS);
    s.on('data', (d) => {
      if (got.length < 65536) got = Buffer.concat([got, d]);
    });
    s.on('end', () => done('closed'));
    s.on('error', (e) => done(e.code === 'ECONNRESET' || e.code === 'EPIPE' ? 'closed' : `error ${e.code ?? e.message}`));
    s.on('connect', () => {
      s.write(bytes);
      if (fin) s.end();
    });
  });
}

/** Walks plaintext record headers: true when one is an alert (content type 21). */
function hasAlert(buf) {
  let o = 0;
  while (o + 5 <= buf.length) {
    if (buf[o] === 21) return true;
    o += 5 + buf.readUInt16BE(o + 3);
  }
  return false;
}

/** A legal ClientHello (and the rest of the client's flights) in 1-byte segments: must be served, or time out cleanly. */
function driveSegmented(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host: '127.0.0.1' });
    const c = tls.connect({ socket: oneByteTransport(sock), servername: 'localhost', rejectUnauthorized: false });
    let settled = false;
    const done = (end) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      c.destroy();
      sock.destroy();
      resolve({ end, alert: false, bad: end !== 'served' && end !== 'timeout' ? `a legal ClientHello in 1-byte segments was not served: ${end}` : undefined });
    };
    const timer = setTimeout(() => done('timeout'), REAL_CLIENT_TIMEOUT_MS);
    const probe = 'one byte at a time';
    let echoed = '';
    c.on('secureConnect', () => c.write(probe));
    c.on('data', (d) => {
      echoed += d.toString('latin1');
      if (echoed.length >= probe.length) done(echoed === probe ? 'served' : `wrong echo ${JSON.stringify(echoed)}`);
    });
    c.on('error', (e) => done(`error ${e.code ?? e.message}`));
    c.on('close', () => done('closed'));
  });
}

/** A TLS 1.2 client that completes a handshake, echoes once, then asks to renegotiate: must be refused, not served. */
function driveRenegotiation(port) {
  return new Promise((resolve) => {
    const c = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', rejectUnauthorized: false, maxVersion: 'TLSv1.2' });
    let settled = false;
    let echoedOk = false;
    const done = (end, bad) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      c.destroy();
      resolve({ end, alert: false, bad });
    };
    const timer = setTimeout(
      () => done('timeout', echoedOk ? 'the renegotiation was neither refused nor completed' : 'no echo before renegotiating'),
      REAL_CLIENT_TIMEOUT_MS,
    );
    c.on('secureConnect', () => c.write('before renegotiation'));
    c.once('data', () => {
      echoedOk = true;
      const accepted = c.renegotiate({ rejectUnauthorized: false }, (err) => {
        if (err) done('refused');
        else done('renegotiated', 'the proxy accepted a TLS 1.2 renegotiation');
      });
      if (!accepted) done('refused');
    });
    c.on('error', () => done(echoedOk ? 'refused' : 'error before echo', echoedOk ? undefined : 'handshake or echo failed before renegotiating'));
    c.on('close', () => done(echoedOk ? 'refused' : 'closed before echo', echoedOk ? undefined : 'closed before the echo'));
  });
}

// ---------------------------------------------------------------- proxy process

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}
const fdCount = (pid) => fs.readdirSync(`/proc/${pid}/fd`).length;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const mib = (kib) => `${(kib / 1024).toFixed(1)} MiB`;

async function status(adminSocket) {
  const { stdout } = await run(process.execPath, [CLI, 'status', '--json', '--admin-socket', adminSocket]);
  return JSON.parse(stdout);
}

async function startProxy(backendPort) {
  const dir = tempDir('fuzz');
  const adminSocket = path.join(dir, 'admin.sock');
  const args = [CLI, 'run', '--listen', '127.0.0.1:0', '--backend', `127.0.0.1:${backendPort}`, '--admin-socket', adminSocket, '--log-level', 'warn', '--ktls', opt.ktls];
  if (GUEST) {
    // The guest's one slow CPU can keep a legal (1-byte-segmented) handshake waiting past the default 10 s.
    fs.writeFileSync(path.join(dir, 'fuzz.toml'), '[timeouts]\nhandshake = "60s"\nbackend_connect = "30s"\n');
    args.push('--config', path.join(dir, 'fuzz.toml'));
  }
  const child = spawn(
    process.execPath,
    args,
    { env: { ...process.env, IRONSOCKET_STATE_DIR: path.join(dir, 'state') }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  let lastLines = [];
  let partial = '';
  child.stdout.setEncoding('utf8').on('data', (d) => {
    const parts = (partial + d).split('\n');
    partial = parts.pop();
    lastLines = lastLines.concat(parts).slice(-20);
  });
  child.stderr.setEncoding('utf8').on('data', (d) => (stderr = (stderr + d).slice(-8000)));
  const proxy = { child, dir, adminSocket, exit: undefined, stderr: () => stderr, lastLines: () => lastLines };
  child.once('exit', (code, signal) => (proxy.exit = { code, signal }));
  for (const end = Date.now() + 30_000 * SLOW; ;) {
    if (proxy.exit) throw new Error(`proxy exited (${JSON.stringify(proxy.exit)}) before serving:\n${stderr}`);
    try {
      const st = await status(adminSocket);
      proxy.port = Number(/:(\d+)$/.exec(st.listeners[0].address)[1]);
      if (proxy.port > 0) return proxy;
    } catch {
      /* not answering yet */
    }
    if (Date.now() > end) throw new Error(`proxy did not answer status within ${30 * SLOW} s:\n${stderr}`);
    await sleep(100);
  }
}

/** A good TLS client echoes 64 KiB through the proxy; true when every byte comes back in order. */
function goodClient(port) {
  const payload = crypto.randomBytes(64 * 1024);
  return new Promise((resolve) => {
    const c = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', rejectUnauthorized: false });
    const chunks = [];
    let n = 0;
    const timer = setTimeout(() => finish(`timed out after ${n} bytes`), 20_000 * SLOW);
    const finish = (err) => {
      clearTimeout(timer);
      c.destroy();
      resolve(err);
    };
    c.on('secureConnect', () => c.write(payload));
    c.on('data', (d) => {
      chunks.push(d);
      n += d.length;
      if (n >= payload.length) finish(Buffer.concat(chunks).equals(payload) ? undefined : 'echo differs from what was sent');
    });
    c.on('error', (e) => finish(`error ${e.code ?? e.message}`));
  });
}

// ---------------------------------------------------------------- main

const problems = [];
HELLOS.push(await captureClientHello({}), await captureClientHello({ maxVersion: 'TLSv1.2' }));
const echo = await echoBackend();
const proxy = await startProxy(echo.port);
const pid = proxy.child.pid;
console.log(
  `fuzz: seed ${SEED} (replay one input: npm run fuzz -- --seed ${SEED} --only I), ${ONLY !== undefined ? `input ${ONLY} only` : `${N} inputs`}, concurrency ${CONC}, ktls ${opt.ktls}`,
);
console.log(
  `fuzz: proxy pid ${pid} on 127.0.0.1:${proxy.port}, echo backend on ${echo.port}; ClientHellos captured: ${HELLOS.map((h) => h.length).join(' and ')} bytes`,
);

const warm = await goodClient(proxy.port);
if (warm) problems.push(`good client before fuzzing: ${warm}`);
await sleep(300);
const fdBefore = fdCount(pid);
const rssBefore = rssKiB(pid);
const countersBefore = (await status(proxy.adminSocket)).counters;

const byKind = {};
const failures = [];
const indices = ONLY !== undefined ? [ONLY] : Array.from({ length: N }, (_, i) => i);
const started = Date.now();
let next = 0;
let finished = 0;
async function worker() {
  while (next < indices.length && !proxy.exit) {
    const i = indices[next++];
    const r = rngFor(SEED, i);
    const kind = r.pick(WHEEL);
    const input = KINDS[kind](r);
    const res =
      input.real === 'segmented'
        ? await driveSegmented(proxy.port)
        : input.real === 'renegotiate'
          ? await driveRenegotiation(proxy.port)
          : await driveRaw(proxy.port, input);
    const k = (byKind[kind] ??= { n: 0, alert: 0, ends: {} });
    k.n++;
    if (res.alert) k.alert++;
    k.ends[res.end] = (k.ends[res.end] ?? 0) + 1;
    if (res.end.startsWith('error')) res.bad ??= `unexpected client error: ${res.end}`;
    if (res.bad) failures.push(`input ${i} (${kind}): ${res.bad}`);
    if (++finished % 2000 === 0) console.log(`fuzz: ${finished}/${indices.length} inputs, ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
}
await Promise.all(Array.from({ length: Math.min(CONC, indices.length) }, worker));
const duration = (Date.now() - started) / 1000;

let goodAfter = 'proxy not running';
let fdAfter = NaN;
let rssAfter = NaN;
let countersAfter = {};
if (!proxy.exit) {
  goodAfter = await goodClient(proxy.port);
  // Connections drain: lingering closes take up to 2 s, abandoned handshakes up to the 10 s handshake timeout.
  for (const end = Date.now() + 15_000 * SLOW; !proxy.exit; await sleep(200)) {
    fdAfter = fdCount(pid);
    if (fdAfter <= fdBefore + FD_TOLERANCE || Date.now() > end) break;
  }
  if (!proxy.exit) {
    rssAfter = rssKiB(pid);
    countersAfter = (await status(proxy.adminSocket)).counters;
  }
}

// ---------------------------------------------------------------- report

console.log(`\nfuzz: ${finished} inputs in ${duration.toFixed(1)} s (${(finished / duration).toFixed(0)} inputs/s)`);
console.log('\ninputs by kind                n  alert seen  outcomes');
for (const [kind, k] of Object.entries(byKind).sort()) {
  const ends = Object.entries(k.ends)
    .sort()
    .map(([e, n]) => `${e} ${n}`)
    .join(', ');
  console.log(`  ${kind.padEnd(24)} ${String(k.n).padStart(5)}  ${String(k.alert).padStart(10)}  ${ends}`);
}
console.log('\nproxy counters (change during the fuzz run)');
for (const name of Object.keys(countersAfter).sort()) {
  const d = countersAfter[name] - (countersBefore[name] ?? 0);
  if (d !== 0) console.log(`  ${name.padEnd(40)} ${d}`);
}
console.log(`\nfd count:  ${fdBefore} before, ${fdAfter} after (tolerance ${FD_TOLERANCE})`);
console.log(`RSS:       ${mib(rssBefore)} before, ${mib(rssAfter)} after (growth ${mib(rssAfter - rssBefore)})`);
console.log(`good client after fuzzing (64 KiB echo): ${goodAfter === undefined ? 'served byte-exact' : goodAfter}`);

if (proxy.exit) {
  problems.push(
    `the proxy exited during the run: ${JSON.stringify(proxy.exit)}\n--- stderr ---\n${proxy.stderr()}\n--- last log lines ---\n${proxy.lastLines().join('\n')}`,
  );
} else {
  if (goodAfter !== undefined) problems.push(`good client after fuzzing: ${goodAfter}`);
  if (!(fdAfter <= fdBefore + FD_TOLERANCE)) problems.push(`fd leak: ${fdBefore} before, ${fdAfter} after 15 s of draining`);
  if (rssAfter - rssBefore > RSS_LIMIT_MIB * 1024) problems.push(`RSS grew by ${mib(rssAfter - rssBefore)} (limit ${RSS_LIMIT_MIB} MiB)`);
}
for (const f of failures.slice(0, 20)) problems.push(f);
if (failures.length > 20) problems.push(`... and ${failures.length - 20} more failed inputs`);

if (!proxy.exit) proxy.child.kill('SIGTERM');
const killer = setTimeout(() => proxy.child.kill('SIGKILL'), 10_000);
if (!proxy.exit) await once(proxy.child, 'exit');
clearTimeout(killer);
await echo.close();
fs.rmSync(proxy.dir, { recursive: true, force: true });

if (problems.length) {
  console.log(`\nFAILED (seed ${SEED}):`);
  for (const p of problems) console.log(`  ${p}`);
}
console.log(`\nfuzz result: ${problems.length ? 'FAILED' : 'OK'}, seed ${SEED}, ${finished} inputs, ${duration.toFixed(1)} s`);
process.exit(problems.length ? 1 : 0);
