// Benchmark: the stall an in-place upgrade causes at N live connections, and the bytes lost (must be 0).
// Also: the share of clients whose session ticket (kept before any upgrade) resumes after each upgrade (must be 100%).
// Usage: npm run bench:upgrade -- [--connections 1000] [--period-ms 200] [--ktls auto|off|require] [--upgrades 3] [--resume-sample 100]
import os from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { echoBackend } from '../dist/testkit/backends.js';
import { startProxyProcess } from '../dist/testkit/proxy-process.js';
import { upgradeBySignal } from './bench/common.mjs';

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
  },
});
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

const echo = await echoBackend();
// All the clients come from one address: no per-source limits.
const proxy = await startProxyProcess({
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
for (let k = 0; k < 2; k++) {
  for (const c of conns) c.maxGap = 0;
  await new Promise((r) => setTimeout(r, 4000));
  baseline.push(Math.round(Math.max(...conns.map((c) => c.maxGap))));
  baselineLag.push(Math.round(lag.max / 1e6));
  lag.reset();
}
// Every client kept the ticket its connection got (before any upgrade): a sample of them reconnects after each upgrade.
const sample = conns.filter((c) => c.session).slice(0, Number(opt['resume-sample']));
const rows = [];
for (let k = 0; k < Number(opt.upgrades); k++) {
  for (const c of conns) c.maxGap = 0;
  lag.reset();
  // By signal, not `ironsocket upgrade`: forking this big client process would stall its event loop, and that
  // stall would be counted as the proxy's.
  const { after, u } = await upgradeBySignal(proxy.adminSocket, proxy.pid);
  const outcome = { ok: u.ok, pid: after.pid, generation: after.generation, moved: u.moved, stallMs: u.stallMs, error: u.error };
  await new Promise((r) => setTimeout(r, 1000));
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
for (const c of conns) clearInterval(c.timer);
await new Promise((r) => setTimeout(r, 2000));
const sent = conns.reduce((n, c) => n + c.sent, 0);
const received = conns.reduce((n, c) => n + c.received, 0);
const mismatched = conns.filter((c) => c.mismatch).length;
const errors = conns.reduce((n, c) => n + c.errors, 0);
for (const c of conns) c.sock.destroy();
const warnings = proxy.logs().filter((l) => /"level":(40|50|60)/.test(l));
await proxy.stop();
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
if (warnings.length) console.log(`proxy warnings (${warnings.length}), first few:\n${warnings.slice(0, 5).join('\n')}`);
process.exit(sent === received && mismatched === 0 && errors === 0 && rows.every((r) => r.ok) && resumedAll === tried ? 0 : 1);
