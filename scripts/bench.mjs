// Benchmark: Iron Socket next to HAProxy, stunnel and hitch, in one run on this machine with the same certificate
// (ECDSA P-256), the same backend and TLS 1.3 only: bulk throughput, full handshakes/s, 1 KiB echo latency, memory
// per idle connection, and what a reload does to established streams (Iron Socket: an in-place upgrade; the peers: their
// graceful reload, which drains), as absolute figures and as ratios to HAProxy. Prints figures; asserts nothing about
// speed, but exits 1 on anything wrong (a wrong byte, a failed upgrade, a byte lost by Iron Socket).
// Usage: npm run bench -- [--quick] [--write] [--no-reload] [--ktls auto|off|require] [--peers haproxy,stunnel,hitch,ironsocket]
// Helpers: bench/peers.mjs (start/stop/measure the peers), bench/client.mjs (load), bench/backend.mjs (backend).
import { fork } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { makeCert, ROOT, tempDir } from '../dist/testkit/proxy-process.js';
import { rpc, sleep, wrong } from './bench/common.mjs';
import { findBin, ironsocketStatus, killAllPeers, PEERS, startPeer } from './bench/peers.mjs';
import { reloadUnderLoad } from './bench/reload.mjs';
import { sTimeRun } from './bench/s-time.mjs';

const argv = process.argv.slice(2);
const usage = (msg) => {
  console.error(`bench: ${msg}\nusage: npm run bench -- [--quick] [--write] [--no-reload] [--ktls auto|off|require] [--peers ${PEERS.map((p) => p.name).join(',')}]`);
  process.exit(2);
};
let opt;
try {
  ({ values: opt } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      'no-reload': { type: 'boolean', default: false },
      write: { type: 'boolean', default: false },
      ktls: { type: 'string', default: 'auto' },
      peers: { type: 'string', default: PEERS.map((p) => p.name).join(',') },
    },
  }));
} catch (e) {
  usage(e.message);
}
if (!['auto', 'off', 'require'].includes(opt.ktls)) usage(`--ktls: expected auto, off or require, got ${opt.ktls}`);
const wanted = opt.peers.split(',').map((n) => n.trim());
const unknown = wanted.filter((n) => !PEERS.some((p) => p.name === n));
if (unknown.length) usage(`--peers: unknown ${unknown.join(', ')}`);
// Reload: `streams` established echo streams; `quietMs` is the no-reload window (and the shortest reload window), and
// `holdMs` how long after the reload the streams' holders are looked up.
const S = opt.quick
  ? { warmupMs: 250, tputMs: 1500, hsMs: 1500, latMs: 1500, idle: 1000, streams: 200, quietMs: 1500, holdMs: 2000, sTimeS: 2 }
  : { warmupMs: 1000, tputMs: 10_000, hsMs: 10_000, latMs: 10_000, idle: 5000, streams: 1000, quietMs: 4000, holdMs: 5000, sTimeS: 8 };
const HS_CONCURRENCY = 16;
// openssl s_time processes at once (each connects back-to-back): C clients, cheaper per handshake than node:tls ones.
const S_TIME_PROCS = 8;
const LAT_CONNS = 8;
const PERIOD_MS = 200; // each reload stream writes STREAM_CHUNK bytes this often; the backend echoes them
const STREAM_CHUNK = 64;

// --- cleanup: every process and temp dir goes, on success, error or signal -------------------------------------
const children = new Set();
let dir;
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
  killAllPeers();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => (console.error(`\nbench: ${sig}, cleaning up`), process.exit(130)));
const say = (msg) => process.stderr.write(`bench: ${msg}\n`);

function forkChild(file, name) {
  const child = fork(new URL(`./bench/${file}`, import.meta.url), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  return rpc(child, name);
}

// --- machine, limits -----------------------------------------------------------------------------------------------
const fdLimit = Number(/Max open files\s+(\d+)/.exec(fs.readFileSync('/proc/self/limits', 'utf8'))?.[1] ?? 1024);
let N = S.idle;
const notes = [];
// A proxy holds two sockets per connection; Node cannot raise its own limit, so N must fit the one it was given.
if (2 * N + 200 > fdLimit) {
  N = Math.max(100, Math.floor((fdLimit - 200) / 2));
  notes.push(`idle connections reduced to ${N}: ulimit -n is ${fdLimit} and a proxy needs 2 fds per connection`);
}
const perClient = Math.max(100, fdLimit - 200);
const K = Math.min(S.streams, N); // the same fd budget
const cpu = `${os.cpus().length} × ${os.cpus()[0]?.model?.trim() ?? 'unknown CPU'}`;
const ktlsHere = fs.existsSync('/proc/net/tls_stat') ? 'kTLS available' : 'no kTLS in this kernel (no /proc/net/tls_stat)';
const load = os.loadavg().map((l) => l.toFixed(2));
const machine = `${cpu}, ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM, Linux ${os.release()}, ${ktlsHere}, Node ${process.version}, load ${load.join(' ')} at start`;
const date = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
const command =
  process.env.npm_lifecycle_event === 'bench'
    ? `npm run bench${argv.length ? ` -- ${argv.join(' ')}` : ''}`
    : `node scripts/bench.mjs ${argv.join(' ')}`.trim();

// --- measurements ----------------------------------------------------------------------------------------------------
const broken = []; // things that are wrong, not slow: they make the exit code 1
const trouble = []; // a peer that failed a step for want of speed or capacity: reported, not fatal (see `wrong`)

/** One bulk run: `conns` streams in direction `dir`, spread over the client processes; MB/s and the peer's CPU time. */
async function throughput(peer, backend, clients, dir, conns) {
  const used = clients.slice(0, Math.min(conns, clients.length));
  await backend('reset');
  try {
    await Promise.all(used.map((c, i) => c('tputOpen', { port: peer.port, dir, conns: Math.floor(conns / used.length) + (i < conns % used.length) })));
    await sleep(S.warmupMs);
    // Counted where the bytes arrive, by that process's own clock.
    const counts = () => (dir === 'up' ? backend('stats').then((st) => [{ bytes: st.upBytes, at: st.at }]) : Promise.all(used.map((c) => c('tputCount'))));
    const [a, cpuA] = [await counts(), peer.cpuMs()];
    await sleep(S.tputMs);
    const [b, cpuB] = [await counts(), peer.cpuMs()];
    const stops = await Promise.all(used.map((c) => c('tputStop')));
    const errors = stops.flatMap((st) => st.errors);
    const bad = stops.reduce((n, st) => n + st.badStreams, 0);
    if (bad) throw wrong(`${bad} streams had wrong bytes`);
    let problem = errors.length ? `connection errors: ${errors.join('; ')}` : '';
    if (dir === 'up' && !problem) {
      // Everything written must reach the backend, byte for byte: wait for the proxy to drain.
      const sent = stops.reduce((n, st) => n + st.bytes, 0);
      let st;
      for (let t = 0; t < 200; t++, await sleep(50)) if ((st = await backend('stats')).upBytes >= sent) break;
      if (st.upBadStreams) throw wrong(`${st.upBadStreams} streams had wrong bytes at the backend`);
      if (st.upBytes !== sent) throw wrong(`sent ${sent} bytes, the backend got ${st.upBytes}`);
    }
    if (problem) throw new Error(problem);
    const mb = a.reduce((n, x, i) => n + (b[i].bytes - x.bytes) / 1e6, 0);
    return { rate: a.reduce((n, x, i) => n + (b[i].bytes - x.bytes) / 1e6 / ((b[i].at - x.at) / 1000), 0), mb, cpuMs: cpuB - cpuA };
  } finally {
    await Promise.all(used.map((c) => c('tputClose')));
  }
}

/**
 * A peer's resident memory once it stops changing: sampled every 200 ms until the last second's samples lie within
 * 0.5 % (or 256 KiB) of each other, at most 10 s. A burst's garbage that a peer gives back by itself is not memory
 * per connection; the same wait applies to every peer, and one that never settles is read at the bound.
 */
async function settledRssKiB(peer) {
  const samples = [];
  for (const end = Date.now() + 10_000; ; await sleep(200)) {
    samples.push(peer.rssKiB());
    const last = samples.slice(-6);
    const spread = Math.max(...last) - Math.min(...last);
    if ((last.length === 6 && spread <= Math.max(256, last.at(-1) * 0.005)) || Date.now() > end) return { kib: last.at(-1), waitedMs: (samples.length - 1) * 200 };
  }
}

async function idleMemory(peer, clients, ironsocket) {
  const heapBefore = ironsocket ? (await ironsocketStatus(peer.admin)).relayHeapKiB : undefined;
  const { kib: before } = await settledRssKiB(peer);
  const share = Math.ceil(N / clients.length);
  try {
    const opened = await Promise.all(clients.map((c, i) => c('idleOpen', { port: peer.port, n: Math.max(0, Math.min(share, N - i * share)) })));
    const open = opened.reduce((n, o) => n + o.opened, 0);
    if (open !== N) throw new Error(`only ${open} of ${N} idle connections opened (${opened.find((o) => o.firstError)?.firstError})`);
    const { kib: after, waitedMs } = await settledRssKiB(peer);
    const status = ironsocket ? await ironsocketStatus(peer.admin) : undefined;
    // What the relay threads' JavaScript holds per established connection (Iron Socket only: it reports its heaps).
    const heapKib = status ? (status.relayHeapKiB - heapBefore) / N : undefined;
    return { kib: (after - before) / N, before, after, status, heapKib, waitedMs };
  } finally {
    await Promise.all(clients.map((c) => c('idleClose')));
  }
}

async function measurePeer(peer, backend, clients, ironsocket) {
  const r = {};
  const bulk = [];
  const step = async (what, fn) => {
    if (!peer.alive()) {
      if (!r.died) broken.push(`${peer.name} exited during the run; its output:\n${peer.output()}`);
      return void (r.died = true);
    }
    const t = Date.now();
    try {
      await fn();
      say(`  ${what} (${((Date.now() - t) / 1000).toFixed(1)} s)`);
    } catch (e) {
      say(`  ${what}: FAILED (${((Date.now() - t) / 1000).toFixed(1)} s): ${e.message.split("\n")[0]}`);
      (ironsocket || e.wrong ? broken : trouble).push(`${peer.name}: ${what}: ${e.message}`);
    }
  };
  await step('warm-up handshakes', async () => {
    // A peer may accept before it can handshake (Iron Socket's worker threads load after it listens; in the
    // kTLS lane's slow guest that takes seconds): warm up until handshakes complete.
    let w;
    for (const end = Date.now() + 60_000; ; await sleep(500)) {
      w = await clients[0]('handshakes', { port: peer.port, concurrency: 4, warmupMs: 0, ms: 300 });
      if ((w.count > 0 && !w.errors) || Date.now() > end) break;
    }
    if (!w.count) throw new Error(`no handshake completed within 60 s: ${w.firstErrors.join('; ')}`);
    r.tls = w.seen.join(', ');
    if (w.fingerprint !== FINGERPRINT) throw wrong(`served a certificate other than the bench one (${w.fingerprint})`);
    if (w.errors) throw new Error(`${w.errors} handshakes failed: ${w.firstErrors.join('; ')}`);
    if (!w.seen.every((s) => s.startsWith('TLSv1.3 '))) throw wrong(`negotiated ${r.tls}, not TLS 1.3`);
  });
  await sleep(500);
  await step(`${N} idle connections`, async () => {
    const m = await idleMemory(peer, clients, ironsocket);
    r.mem = m.kib;
    r.jsHeap = m.heapKib ?? 'n/a';
    r.rss = `${Math.round(m.before / 1024)} → ${Math.round(m.after / 1024)} MiB (settled ${(m.waitedMs / 1000).toFixed(1)} s after the last connection opened)`;
    if (m.status) {
      const modes = Object.entries(m.status.modes).map(([k, v]) => `${k} ${v}`);
      r.ironsocket = `${m.status.workers ?? '?'} relay worker threads (from status), --ktls ${opt.ktls}, idle connections by mode: ${modes.join(', ')}`;
    }
  });
  await step('latency', async () => {
    const l = await clients[0]('latency', { port: peer.port, conns: LAT_CONNS, warmupMs: S.warmupMs, ms: S.latMs });
    if (l.bad) throw wrong(`${l.bad} wrong echoes`);
    if (l.errors.length || !l.count) throw new Error(`${l.bad} wrong echoes, errors: ${l.errors.join('; ') || 'none'}, ${l.count} samples`);
    r.p50 = l.p50;
    r.p99 = l.p99;
  });
  await step('handshakes', async () => {
    const concurrency = HS_CONCURRENCY / clients.length;
    const all = Promise.all(clients.map((c) => c('handshakes', { port: peer.port, concurrency, warmupMs: S.warmupMs, ms: S.hsMs })));
    await sleep(S.warmupMs);
    const cpuA = peer.cpuMs();
    await sleep(S.hsMs);
    const cpuB = peer.cpuMs();
    const hs = await all;
    const count = hs.reduce((n, h) => n + h.count, 0);
    const errors = hs.reduce((n, h) => n + h.errors, 0);
    r.hs = count / (S.hsMs / 1000);
    r.hsCpu = (cpuB - cpuA) / count;
    if (errors) throw new Error(`${errors} of ${count + errors} handshakes failed: ${hs.flatMap((h) => h.firstErrors).join('; ')}`);
  });
  for (const reuse of [false, true])
    await step(`handshakes, ${S_TIME_PROCS} × openssl s_time ${reuse ? '-reuse' : '-new'}`, async () => {
      await sTimeRun({ port: peer.port, reuse, procs: S_TIME_PROCS, seconds: 1, cpuMs: peer.cpuMs }); // warm-up
      const t = await sTimeRun({ port: peer.port, reuse, procs: S_TIME_PROCS, seconds: S.sTimeS, cpuMs: peer.cpuMs });
      // -reuse: each process's first connection is full, every later one must resume (else the row would mislabel them).
      if (reuse && t.full > S_TIME_PROCS) throw new Error(`${t.full} of ${t.count} s_time -reuse connections were full handshakes, not resumed`);
      if (!reuse && t.resumed > 0) throw wrong(`${t.resumed} of ${t.count} s_time -new connections were resumed`);
      r[reuse ? 'stResumed' : 'stFull'] = t.rate;
      r[reuse ? 'stResumedCpu' : 'stFullCpu'] = t.cpuPerHandshake;
    });
  for (const [key, dir, conns] of [
    ['up1', 'up', 1],
    ['up32', 'up', 32],
    ['down1', 'down', 1],
    ['down32', 'down', 32],
  ])
    await step(`throughput ${dir}, ${conns} conn`, async () => {
      const t = await throughput(peer, backend, clients, dir, conns);
      r[key] = t.rate;
      bulk.push(t);
    });
  if (bulk.length === 4) r.bulkCpu = bulk.reduce((n, t) => n + t.cpuMs, 0) / bulk.reduce((n, t) => n + t.mb, 0);
  // Last: a reload leaves the peer in another state (a new worker, a new generation).
  if (opt['no-reload']) return r;
  await step(`${K} established streams through ${ironsocket ? 'an in-place upgrade' : 'a reload'}`, () =>
    reloadUnderLoad(peer, clients, r, ironsocket, { streams: K, periodMs: PERIOD_MS, chunk: STREAM_CHUNK, quietMs: S.quietMs, holdMs: S.holdMs }),
  );
  return r;
}

// --- run -------------------------------------------------------------------------------------------------------------
const METRICS = [
  ['up1', 'MB/s up, 1 conn (higher is better)', 1],
  ['up32', 'MB/s up, 32 conns (higher is better)', 1],
  ['down1', 'MB/s down, 1 conn (higher is better)', 1],
  ['down32', 'MB/s down, 32 conns (higher is better)', 1],
  ['bulkCpu', 'proxy CPU ms per MB, 4 bulk runs (lower is better)', 2],
  ['hs', `full TLS 1.3 handshakes/s, ${HS_CONCURRENCY} connectors (higher is better)`, 0],
  ['hsCpu', 'proxy CPU ms per handshake (lower is better)', 3],
  ['stFull', `full TLS 1.3 handshakes/s, ${S_TIME_PROCS} × openssl s_time -new (higher is better)`, 0],
  ['stFullCpu', 'proxy CPU ms per full handshake, s_time (lower is better)', 3],
  ['stResumed', `resumed TLS 1.3 handshakes/s, ${S_TIME_PROCS} × openssl s_time -reuse (higher is better)`, 0],
  ['stResumedCpu', 'proxy CPU ms per resumed handshake, s_time (lower is better)', 3],
  ['p50', `1 KiB echo p50 ms, ${LAT_CONNS} conns (lower is better)`, 3],
  ['p99', `1 KiB echo p99 ms, ${LAT_CONNS} conns (lower is better)`, 3],
  ['mem', `KiB RSS per idle conn, N=${N} (lower is better)`, 1],
  ['jsHeap', `of which JavaScript heap in the relay threads, KiB per idle conn (Iron Socket only)`, 2],
];
// What a reload does to K established streams; no ratios (the peers' streams do not move: nothing to divide by).
const RELOAD_METRICS = [
  ['stall', `reload: stall on ${K} established streams, ms (client's largest gap − ${PERIOD_MS} ms period; lower is better)`, 0],
  ['stallBase', `reload: same, a window without a reload, ms (the noise floor)`, 0],
  ['proxyStall', 'reload: stall reported by the proxy, ms (Iron Socket upgrade-result)', 0],
  ['lost', 'reload: bytes lost on the streams (sent − echoed back; 0 is right)', 0],
  ['cut', 'reload: streams cut (error, reset or EOF; lower is better)', 0],
  ['onNew', `reload: streams on new code after it, of ${K} (higher is better)`, 0],
  ['oldProcs', `reload: pre-reload processes still holding them ${S.holdMs / 1000} s later (draining)`, 0],
];

const t0 = Date.now();
dir = tempDir('bench');
const { certFile, keyFile } = await makeCert(dir, 'ec');
const pem = path.join(dir, 'cert+key.pem'); // haproxy `crt`, stunnel `cert` and hitch `pem-file` want both in one file
fs.writeFileSync(pem, fs.readFileSync(certFile, 'utf8') + fs.readFileSync(keyFile, 'utf8'));
const FINGERPRINT = new crypto.X509Certificate(fs.readFileSync(certFile)).fingerprint256;
const backend = forkChild('backend.mjs', 'backend');
const backendPort = await backend('port');
// One client process per CPU (a node:tls client needs about as much CPU per handshake as the proxy), more if fds run short.
const clients = Array.from({ length: Math.max(os.cpus().length, Math.ceil(N / perClient)) }, (_, i) => forkChild('client.mjs', `client ${i}`));

const results = {};
const about = [];
for (const def of PEERS.filter((p) => wanted.includes(p.name))) {
  const bin = findBin(def);
  if (!bin) {
    results[def.name] = 'not installed';
    about.push(`${def.name}: not installed`);
    continue;
  }
  const version = await def.version(bin);
  say(`${def.name} ${version ?? ''}`);
  let peer;
  try {
    peer = { name: def.name, reload: def.reload, ...(await startPeer(def, { bin, dir, backendPort, certFile, keyFile, pem, ktls: opt.ktls })) };
  } catch (e) {
    results[def.name] = 'failed to start';
    broken.push(`${def.name} is installed (${bin}) but failed to start: ${e.message}`);
    about.push(`${def.name} ${version}: failed to start`);
    continue;
  }
  const r = (results[def.name] = await measurePeer(peer, backend, clients, def.name === 'ironsocket').finally(() => peer.stop()));
  const extra = [r.ironsocket, r.tls, r.rss && `RSS ${r.rss} with the idle connections`, r.reload && `reload by ${r.reload}`];
  about.push(`${def.name} ${version ?? '(version unknown)'}: ${def.model}; ${extra.filter(Boolean).join('; ')}`);
}

// --- report ----------------------------------------------------------------------------------------------------------
const names = Object.keys(results);
const cell = (name, key, digits) => {
  const r = results[name];
  if (typeof r === 'string') return r;
  if (typeof r[key] === 'string') return r[key];
  return r[key] === undefined ? (r.died ? 'died' : 'error') : Number(r[key].toFixed(digits));
};
const figures = Object.fromEntries(
  [...METRICS, ...(opt['no-reload'] ? [] : RELOAD_METRICS)].map(([key, label, d]) => [label, Object.fromEntries(names.map((n) => [n, cell(n, key, d)]))]),
);
const ratios = Object.fromEntries(
  METRICS.map(([key, label]) => [
    label,
    Object.fromEntries(
      names.map((n) => {
        const base = results.haproxy?.[key];
        const v = results[n][key];
        if (typeof results[n] === 'string') return [n, results[n]];
        return [n, typeof v === 'number' && typeof base === 'number' && base > 0 ? Number((v / base).toFixed(2)) : 'n/a'];
      }),
    ),
  ]),
);
notes.push(
  'client (node:tls, TLS 1.3 only, no session resumption), backend and proxy are separate processes sharing this machine: figures are relative, not a proxy in isolation',
  `${clients.length} client processes; 1-connection runs and latency use one, 32-connection runs and handshakes are spread over all`,
  'up = client → backend, down = backend → client; MB = 10^6 bytes; every byte is checked against a known pattern',
  "proxy CPU = user + system time of all the peer's processes during the measured window: less noisy than rates when the client is the bottleneck",
  'handshakes: each connection is connect → full handshake → 1 request → close; latency: each connection sends 1 KiB and waits for its echo, back-to-back',
  `s_time rows: ${S_TIME_PROCS} openssl s_time processes at once for ${S.sTimeS} s each, every connection a TLS 1.3 handshake + one HTTP/1.0 request answered by the backend (-www /) + close; -new makes every handshake full, -reuse resumes the ticket each process got first (every connection marked full or resumed by s_time is counted, and a -reuse run with full handshakes past each process's first is an error); the clients share the 2 CPUs with the peer, so the rates are what this machine sustains, and CPU per handshake is the clearer comparison`,
  "memory: growth of VmRSS summed over all of the peer's processes, with N idle connections open through it to the backend, divided by N; each reading once the peer's RSS has settled (the last second's samples within 0.5 %, at most 10 s); Iron Socket's JavaScript heap row is the growth of the heap in use on its relay threads (from `status`), which includes garbage not yet collected",
  'per-connection logging is off for every peer (haproxy: no log, stunnel: debug = 3, hitch: log-level = 1, ironsocket: --log-level warn)',
  ...(opt['no-reload']
    ? ['no reload rows: --no-reload']
    : [
      `reload: ${K} TLS streams (ECHO), each writing ${STREAM_CHUNK} B every ${PERIOD_MS} ms, every echoed byte checked; then the peer's own reload, as operators trigger it. Stall = the largest gap between two echoes (or since the last) on any stream, minus the period, over a window from the signal to 1 s after the reload finished (at least ${S.quietMs / 1000} s, the length of the no-reload window before it). Bytes lost = sent − echoed back, once the writers stopped and the echoes drained. "On new code" = streams whose proxy-side socket is held by a process image started by the reload: read from /proc (fd tables, /proc/net/tcp); for Iron Socket the same pid after its exec, checked with status (generation + 1, every stream listed)`,
      ...PEERS.filter((p) => names.includes(p.name) && typeof results[p.name] !== 'string').map((p) => `${p.name} reload: ${p.reload.how}`),
      "so the peers' reload rows are the contrast, not a race: a peer's reload leaves its established streams where they are, on the old code, in processes that linger until the streams close (a stall there is a side effect, e.g. the new processes starting up on the same CPUs, not a hand-over); Iron Socket's streams move to the new code, and pay for the move in stall",
      ]),
);
for (const t of trouble) notes.push(`a peer could not finish a step (too slow or out of capacity here; its cell says error): ${t.split('\n')[0]}`);
const header = [`# TLS proxy benchmark — ${date} — ${opt.quick ? 'quick' : 'full'} run (${command})`, `# machine: ${machine}`, ...about.map((a) => `# ${a}`)];
console.log(header.join('\n'));
console.table(figures);
console.log(
  "ratios to HAProxy (peer ÷ haproxy: above 1 is better for MB/s and handshakes, below 1 is better for ms and KiB; no reload rows: the peers' established streams do not move, so there is nothing to divide by)",
);
console.table(ratios);
for (const n of notes) console.log(`- ${n}`);
const elapsed = `${Math.round((Date.now() - t0) / 1000)} s`;
console.log(`took ${elapsed}`);

if (opt.write) {
  const md = (table) => {
    const rows = Object.entries(table);
    return [
      `| metric | ${names.join(' | ')} |`,
      `|---|${names.map(() => '---:').join('|')}|`,
      ...rows.map(([k, v]) => `| ${k} | ${names.map((n) => v[n]).join(' | ')} |`),
    ].join('\n');
  };
  const section = [
    `## ${date} — \`${command}\``,
    '',
    `Machine: ${machine}. Took ${elapsed}.`,
    '',
    ...about.map((a) => `- ${a}`),
    '',
    md(figures),
    '',
    "Ratios to HAProxy (above 1 is better for MB/s and handshakes, below 1 is better for ms and KiB; no reload rows, as the peers' established streams do not move):",
    '',
    md(ratios),
    '',
    ...notes.map((n) => `- ${n}`),
    ...(broken.length ? ['', 'Problems in this run:', '', ...broken.map((b) => `- ${b.split('\n')[0]}`)] : []),
    '',
  ].join('\n');
  const file = path.join(ROOT, 'BENCHMARKS.md');
  const intro =
    '# Benchmarks\n\nProduced by `npm run bench` (scripts/bench.mjs), newest run first. Each run starts every peer on the same machine with the same certificate and backend; compare ratios within a run rather than figures across runs.\n\n';
  const old = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : intro;
  const at = old.indexOf('\n## ');
  fs.writeFileSync(file, at < 0 ? `${old.trimEnd()}\n\n${section}` : `${old.slice(0, at + 1)}${section}\n${old.slice(at + 1)}`);
  console.log(`written to ${file}`);
}
if (broken.length) {
  console.error(`\nbench: BROKEN (not slow — wrong):\n${broken.map((b) => `- ${b}`).join('\n')}`);
  process.exit(1);
}
process.exit(0);
