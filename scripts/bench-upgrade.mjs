// Benchmark: the stall an in-place upgrade causes at N live connections, the bytes lost (must be 0), and how long a new
// client (handshake + first echo) waits during an upgrade against without one, beside HAProxy's reload in the same run.
// Also: the share of clients whose session ticket (kept before any upgrade) resumes after each upgrade (must be 100%).
// Usage: npm run bench:upgrade -- [--connections 1000] [--period-ms 200] [--ktls auto|off|require] [--upgrades 3]
//        [--resume-sample 100] [--new-every-ms 50] [--no-haproxy]
import { fork } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { echoBackend } from '../dist/testkit/backends.js';
import { makeCert, startProxyProcess, tempDir } from '../dist/testkit/proxy-process.js';
import { now, rpc, sleep, upgradeBySignal } from './bench/common.mjs';
import { findBin, killAllPeers, PEERS, startPeer } from './bench/peers.mjs';
import { peerReload } from './bench/reload.mjs';

const { values: opt } = parseArgs({
  options: {
    connections: { type: 'string', default: '1000' },
    'period-ms': { type: 'string', default: '200' },
    ktls: { type: 'string', default: 'auto' },
    upgrades: { type: 'string', default: '3' },
    // After each upgrade this many clients reconnect with the ticket their first connection got.
    'resume-sample': { type: 'string', default: '100' },
    // Lower the proxy's CPU priority below this load generator's, so that the client's own CPU
    // starvation (a shared 2-core machine) is not counted as the proxy's stall.
    'proxy-nice': { type: 'string', default: '0' },
    'new-every-ms': { type: 'string', default: '50' },
    'no-haproxy': { type: 'boolean', default: false },
  },
});
const NEW_EVERY = Number(opt['new-every-ms']);
const N = Number(opt.connections);
const PERIOD = Number(opt['period-ms']);
const CHUNK = 64;

function open(port, i) {
  return new Promise((resolve, reject) => {
    const seed = `bench-${i}`;
    const c = { sent: 0, received: 0, mismatch: false, errors: 0, last: 0, maxGap: 0, timer: undefined, sock: undefined };
    const s = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false });
    c.sock = s;
    s.once('session', (x) => (c.session = x));
    s.on('data', (d) => {
      if (!d.equals(pattern(i, c.received, d.length))) c.mismatch = true;
      c.received += d.length;
      const now = performance.now();
      if (c.last) c.maxGap = Math.max(c.maxGap, now - c.last);
      c.last = now;
    });
    s.on('error', () => c.errors++);
    s.once('secureConnect', () => {
      c.timer = setInterval(() => {
        s.write(pattern(i, c.sent, CHUNK));
        c.sent += CHUNK;
      }, PERIOD);
      resolve(c);
    });
    s.once('error', reject);
  });
}

/**
 * The bytes at [offset, offset+len) of connection i's stream: position-dependent, so a lost,
 * duplicated or reordered byte shows, and cheap, so this load generator is not what runs out of CPU.
 */
function pattern(i, offset, len) {
  const b = Buffer.allocUnsafe(len);
  for (let k = 0; k < len; k++) {
    const o = offset + k;
    b[k] = (o * 131 + i * 7 + (o >>> 8) * 17 + (o >>> 16)) & 0xff;
  }
  return b;
}

/** Reconnects with `session` (a ticket from before the upgrades), sends a line, and says whether it resumed and was echoed. */
function resumeOnce(port, session) {
  return new Promise((resolve) => {
    const s = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, session });
    let r = { resumed: false, echoed: false };
    s.once('error', () => (s.destroy(), resolve(r)));
    // Ended with close_notify (end), not reset: the proxy logs a close without one as a truncation warning.
    s.once('close', () => resolve(r));
    s.once('secureConnect', () => {
      const resumed = s.isSessionReused();
      s.once('data', (d) => {
        r = { resumed, echoed: d.toString() === 'resume?\n' };
        s.end();
      });
      s.write('resume?\n');
    });
  });
}

/** How many of the sample's tickets resume now: [resumed, tried]. */
async function resumedShare(port, sample) {
  let resumed = 0;
  for (let i = 0; i < sample.length; i += 20) {
    const rs = await Promise.all(sample.slice(i, i + 20).map((c) => resumeOnce(port, c.session)));
    resumed += rs.filter((r) => r.resumed && r.echoed).length;
  }
  return [resumed, sample.length];
}

const pct = (xs, p) => xs.slice().sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];

const dir = tempDir('bench-upgrade');
const prober = fork(new URL('./bench/new-conns.mjs', import.meta.url), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
process.on('exit', () => {
  prober.kill('SIGKILL');
  killAllPeers();
  fs.rmSync(dir, { recursive: true, force: true });
});
const probe = rpc(prober, 'new-connection prober');
const cert = await makeCert(dir, 'ec');
const echo = await echoBackend();
// All the clients come from one address: no per-source limits.
const proxy = await startProxyProcess({
  cert,
  backendPort: echo.port,
  args: ['--ktls', opt.ktls],
  nice: Number(opt['proxy-nice']),
  config: '[limits]\nmax_connections_per_source = 0\nmax_handshakes_per_source = 0\n',
});
const conns = [];
for (let i = 0; i < N; i += 50) conns.push(...(await Promise.all(Array.from({ length: Math.min(50, N - i) }, (_, j) => open(proxy.port, i + j)))));
const mode = (await proxy.status()).connections[0]?.mode;
await new Promise((r) => setTimeout(r, 1000));
// How late this process's own event loop ran: a gap no proxy could have avoided.
const lag = monitorEventLoopDelay({ resolution: 5 });
lag.enable();
// The same load without an upgrade, over windows as long as an upgrade takes: the gaps this machine shows anyway.
const baseline = [];
const baselineLag = [];
await probe('start', { port: proxy.port, everyMs: NEW_EVERY });
const quietFrom = now();
for (let k = 0; k < 2; k++) {
  for (const c of conns) c.maxGap = 0;
  await new Promise((r) => setTimeout(r, 4000));
  baseline.push(Math.round(Math.max(...conns.map((c) => c.maxGap))));
  baselineLag.push(Math.round(lag.max / 1e6));
  lag.reset();
}
// Every client kept the ticket its connection got (before any upgrade): a sample of them reconnects after each upgrade.
const sample = conns.filter((c) => c.session).slice(0, Number(opt['resume-sample']));
const quietTo = now();
const rows = [];
const windows = [];
for (let k = 0; k < Number(opt.upgrades); k++) {
  for (const c of conns) c.maxGap = 0;
  lag.reset();
  const from = now();
  // By signal, not `ironsocket upgrade`: forking this big client process would stall its event loop, and that
  // stall would be counted as the proxy's.
  const { after, u } = await upgradeBySignal(proxy.adminSocket, proxy.pid);
  const outcome = { ok: u.ok, pid: after.pid, generation: after.generation, moved: u.moved, stallMs: u.stallMs, error: u.error };
  await new Promise((r) => setTimeout(r, 1000));
  windows.push({ from, to: now() });
  const gaps = conns.map((c) => c.maxGap);
  const done = proxy
    .logs()
    .filter((l) => l.includes('"upgrade complete'))
    .map((l) => JSON.parse(l));
  const b = done[done.length - 1]?.stallBreakdownMs ?? {};
  rows.push({
    upgrade: k + 1,
    ok: outcome.ok,
    moved: outcome.moved,
    proxyStallMs: outcome.stallMs,
    intoBridgeMs: b.intoBridge,
    outOfBridgeMs: b.outOfBridge,
    inBridgeMs: b.bridgeHeldMs,
    clientMaxGapMs: Math.round(Math.max(...gaps)),
    clientLoopLagMs: Math.round(lag.max / 1e6),
    clientP50GapMs: Math.round(pct(gaps, 50)),
    clientP99GapMs: Math.round(pct(gaps, 99)),
    ticketsResumed: (await resumedShare(proxy.port, sample)).join('/'),
  });
}
await probe('stop');
const newConns = { quiet: await probe('take', { from: quietFrom, to: quietTo }), during: [] };
for (const w of windows) newConns.during.push(...(await probe('take', w)));
const upgradeBoot = proxy
  .logs()
  .filter((l) => l.includes('"upgrade complete'))
  .map((l) => JSON.parse(l).bootMs);
for (const c of conns) clearInterval(c.timer);
await new Promise((r) => setTimeout(r, 2000));
const sent = conns.reduce((n, c) => n + c.sent, 0);
const received = conns.reduce((n, c) => n + c.received, 0);
const mismatched = conns.filter((c) => c.mismatch).length;
const errors = conns.reduce((n, c) => n + c.errors, 0);
for (const c of conns) c.sock.destroy();
const warnings = proxy.logs().filter((l) => /"level":(40|50|60)/.test(l));
const proxyLogs = proxy.logs();
await proxy.stop();
const haproxy = opt['no-haproxy'] ? 'not run (--no-haproxy)' : await haproxyReloads().catch((e) => `failed: ${e.message}`);
await prober.kill();
await echo.close();

console.log(
  `# in-place upgrade stall — ${new Date().toISOString()} — ${os.cpus().length} CPU ${os.cpus()[0]?.model ?? ''}, Linux ${os.release()}, Node ${process.version}`,
);
console.log(`# ${N} connections in ${mode} mode, each echoing ${CHUNK} B every ${PERIOD} ms; the client-side gap includes the ${PERIOD} ms period`);
console.table(rows);
console.log(
  `stall (proxy-measured: the longest one connection was paused moving into or out of the bridge): max ${Math.max(...rows.map((r) => r.proxyStallMs))} ms`,
);
console.log(`stall (client-observed, largest gap − period): max ${Math.max(...rows.map((r) => r.clientMaxGapMs)) - PERIOD} ms`);
console.log(
  `same load without an upgrade (4 s windows): largest gap − period ${baseline.map((g) => `${g - PERIOD} ms`).join(', ')}; client loop lag ${baselineLag.map((g) => `${g} ms`).join(', ')}`,
);
const tried = rows.reduce((n, r) => n + Number(r.ticketsResumed.split('/')[1]), 0);
const resumedAll = rows.reduce((n, r) => n + Number(r.ticketsResumed.split('/')[0]), 0);
console.log(
  `session tickets from before the upgrades resumed after them: ${resumedAll} of ${tried} reconnects (${tried ? Math.round((100 * resumedAll) / tried) : 0}%; ${sample.length} clients after each upgrade)`,
);
console.log(`bytes sent ${sent}, echoed back ${received}, lost ${sent - received}, streams with a wrong byte ${mismatched}, client errors ${errors}`);
const latency = (label, xs) => {
  const ok = xs.filter((x) => x.ms !== undefined).map((x) => x.ms);
  const sorted = ok.slice().sort((a, b) => a - b);
  const f = (v) => (v === undefined ? '-' : Number(v.toFixed(1)));
  return {
    '': label,
    clients: xs.length,
    failed: xs.length - ok.length,
    p50Ms: f(pct(sorted, 50)),
    p99Ms: f(pct(sorted, 99)),
    maxMs: f(sorted[sorted.length - 1]),
  };
};
console.log(
  `# new clients: one every ${NEW_EVERY} ms from a process of their own, each TLS 1.3 full handshake + 64 B echoed, connect to echo; "during" = from the signal to 1 s after the upgrade (reload) finished`,
);
const latencyRows = [latency('ironsocket, no upgrade', newConns.quiet), latency(`ironsocket, during ${windows.length} upgrades`, newConns.during)];
if (typeof haproxy === 'string') console.log(`haproxy: ${haproxy}`);
else latencyRows.push(latency('haproxy, no reload', haproxy.quiet), latency(`haproxy, during ${haproxy.reloads} reloads`, haproxy.during));
const upgrades = timelines();
latencyRows.splice(2, 0, ...byPhase(newConns.during, upgrades));
console.table(latencyRows);
const failedDuring = newConns.during.filter((x) => x.error);
if (failedDuring.length) console.log(`ironsocket new clients that failed during upgrades: ${[...new Set(failedDuring.map((x) => x.error))].join('; ')}`);
console.log(`ironsocket new image start, ms after execve (per upgrade): ${upgradeBoot.map((b) => JSON.stringify(b)).join(' ')}`);
console.log(`ironsocket upgrade timelines, ms after "upgrade requested" (from its log):\n${upgrades.map((u) => JSON.stringify(u.marks)).join('\n')}`);
if (warnings.length) console.log(`proxy warnings (${warnings.length}), first few:\n${warnings.slice(0, 5).join('\n')}`);
/** Each upgrade's steps as the proxy logged them, ms after its "upgrade requested" line. */
function timelines() {
  const steps = {
    'accepting paused': 'paused',
    'the upgrade bridge accepts new clients until the new image does': 'bridgeAccepts',
    'every connection is in the upgrade bridge': 'inBridge',
    exec: 'exec',
    'accepting connections': 'accepting',
    'upgrade complete: connections resumed': 'complete',
  };
  const out = [];
  let cur;
  for (const line of proxyLogs) {
    let l;
    try {
      l = JSON.parse(line);
    } catch {
      continue;
    }
    const t = Date.parse(l.time);
    if (String(l.msg).startsWith('upgrade requested')) out.push((cur = { t0: t, marks: {} }));
    else if (cur && steps[l.msg] && cur.marks[steps[l.msg]] === undefined) cur.marks[steps[l.msg]] = t - cur.t0;
  }
  return out;
}

/** The new clients of the upgrade windows by the phase they started in: before the pause, paused → the new image accepts, after. */
function byPhase(samples, upgrades) {
  const phases = { 'old image (pre-flight, bridge start)': [], 'paused → new image accepts': [], 'new image (taking back)': [], 'after the upgrade': [] };
  const names = Object.keys(phases);
  for (const x of samples) {
    const u = upgrades.filter((v) => v.t0 <= x.at).pop();
    const m = u?.marks ?? {};
    const paused = u && u.t0 + (m.paused ?? m.bridgeAccepts ?? Infinity);
    const accepting = u && u.t0 + (m.accepting ?? Infinity);
    const complete = u && u.t0 + (m.complete ?? Infinity);
    const i = !u ? 0 : x.at < paused ? 0 : x.at < accepting ? 1 : x.at < complete ? 2 : 3;
    phases[names[i]].push(x);
  }
  return Object.entries(phases).map(([name, xs]) => latency(`  ${name}`, xs));
}

/** The same N streams and new clients through HAProxy (master-worker), across its own reloads (SIGUSR2 to the master). */
async function haproxyReloads() {
  const def = PEERS.find((p) => p.name === 'haproxy');
  const bin = findBin(def);
  if (!bin) return 'not installed';
  const pem = path.join(dir, 'cert+key.pem');
  fs.writeFileSync(pem, fs.readFileSync(cert.certFile, 'utf8') + fs.readFileSync(cert.keyFile, 'utf8'));
  const peer = { name: def.name, reload: def.reload, ...(await startPeer(def, { bin, dir, backendPort: echo.port, pem })) };
  const streams = [];
  try {
    for (let i = 0; i < N; i += 50) streams.push(...(await Promise.all(Array.from({ length: Math.min(50, N - i) }, (_, j) => open(peer.port, i + j)))));
    await sleep(1000);
    await probe('start', { port: peer.port, everyMs: NEW_EVERY });
    const qFrom = now();
    await sleep(8000);
    const qTo = now();
    const ws = [];
    for (let k = 0; k < Number(opt.upgrades); k++) {
      const from = now();
      await peerReload(peer, peer.processes());
      await sleep(1000);
      ws.push({ from, to: now() });
    }
    await probe('stop');
    const during = [];
    for (const w of ws) during.push(...(await probe('take', w)));
    return { quiet: await probe('take', { from: qFrom, to: qTo }), during, reloads: ws.length };
  } finally {
    for (const c of streams) (clearInterval(c.timer), c.sock.destroy());
    await peer.stop();
  }
}

process.exit(sent === received && mismatched === 0 && errors === 0 && rows.every((r) => r.ok) && resumedAll === tried ? 0 : 1);
