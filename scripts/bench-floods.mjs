// Post-handshake floods against Iron Socket and HAProxy in the same run: what one client sending records without data costs each proxy.
//
// Usage: npm run bench:floods -- [--quick] [--write] [--peers haproxy,ironsocket]
//
// Per flood and per proxy, one client completes a normal TLS 1.3 handshake, then sends the flood and never reads
// (Iron Socket: user mode, 2 relay workers). Meanwhile a good client echoes 16 bytes every 20 ms through the same
// proxy. Printed per flood: the proxy's CPU seconds from the flood's start until it is idle again, its RSS growth at
// the peak and once the flooding connection is gone, the seconds until idle (CPU back to what the good client alone
// costs), and the good client's largest echo latency in that time; then Iron Socket / HAProxy ratios (CPU is net of
// the good client's share, measured for 2 s before each flood). --write adds the table to
// BENCHMARKS.md (newest first).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { makeCert, tempDir } from '../dist/testkit/proxy-process.js';
import { scriptedClient } from '../dist/testkit/scripted-client.js';
import { sleep } from './bench/common.mjs';
import { findBin, killAllPeers, PEERS, startPeer } from './bench/peers.mjs';

const { values: opt } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    write: { type: 'boolean', default: false },
    peers: { type: 'string', default: 'haproxy,ironsocket' },
  },
});
const scale = opt.quick ? 0.2 : 1;
const FLOODS = [
  {
    name: 'KeyUpdate(update_requested)',
    count: Math.round(50_000 * scale),
    record: (c) => {
      const r = c.seal(22, Buffer.from([24, 0, 0, 1, 1]));
      c.nextSendKey();
      return r;
    },
  },
  { name: 'empty application-data records', count: Math.round(50_000 * scale), record: (c) => c.seal(23, Buffer.alloc(0)) },
  { name: 'maximum-padding records (16 KiB of zeros, no data)', count: Math.round(20_000 * scale), record: (c) => c.seal(23, Buffer.alloc(0), 1 << 14) },
];
const WINDOW_MS = 500;
const MAX_WAIT_MS = 120_000;

process.on('exit', killAllPeers);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

/**
 * A client that echoes 16 bytes every 20 ms and keeps the largest round trip since `reset()`. It runs in a
 * process of its own, so the flood being built and sent here does not delay its timers.
 */
const GOOD_CLIENT = `
const tls = require('node:tls');
const s = tls.connect({ port: Number(process.argv[1]), host: '127.0.0.1', servername: 'localhost', rejectUnauthorized: false });
let sentAt = 0, worst = 0, waiting = false;
s.on('secureConnect', () => {
  process.send('ready');
  setInterval(() => {
    if (waiting) return;
    waiting = true;
    sentAt = performance.now();
    s.write('0123456789abcdef');
  }, 20);
});
s.on('data', () => { waiting = false; worst = Math.max(worst, performance.now() - sentAt); });
s.on('error', (e) => { console.error(e.message); process.exit(1); });
process.on('message', (m) => {
  if (m === 'reset') worst = 0;
  else process.send({ worst: waiting ? Math.max(worst, performance.now() - sentAt) : worst });
});
`;

/** The backend: an echo server in a process of its own too (the good client's echoes pass through it). */
const ECHO_BACKEND = `
const net = require('node:net');
const srv = net.createServer((s) => { s.on('error', () => {}); s.pipe(s); });
srv.listen(0, '127.0.0.1', () => process.send(srv.address().port));
process.on('disconnect', () => process.exit(0));
`;

async function echoBackend() {
  const child = spawn(process.execPath, ['-e', ECHO_BACKEND], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const port = await new Promise((resolve, reject) => {
    child.once('message', resolve);
    child.once('exit', (code) => reject(new Error(`the echo backend exited (${code})`)));
  });
  return { port, close: () => child.kill() };
}

async function goodClient(port) {
  const child = spawn(process.execPath, ['-e', GOOD_CLIENT, String(port)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  await new Promise((resolve, reject) => {
    child.once('message', resolve);
    child.once('exit', (code) => reject(new Error(`the good client exited (${code})`)));
  });
  return {
    reset: () => child.send('reset'),
    worst: () =>
      new Promise((resolve) => {
        child.once('message', (m) => resolve(m.worst));
        child.send('worst');
      }),
    close: () => child.kill(),
  };
}

/** The first batches of the flood, built before it starts (up to 32 MiB), so building does not stall the good client. */
function prebuild(c, flood) {
  const batches = [];
  let built = 0;
  let bytes = 0;
  while (built < flood.count && bytes < 32 << 20) {
    const batch = [];
    for (let i = 0; i < 500 && built < flood.count; i++, built++) batch.push(flood.record(c));
    batches.push(Buffer.concat(batch));
    bytes += batches.at(-1).length;
  }
  return { batches, built };
}

/**
 * Sends the flood (prebuilt batches, then built as it goes) until it is all sent, the proxy has closed the
 * connection, or `stop` resolves (a proxy that stops reading holds the rest back: TCP flow control).
 */
async function sendFlood(c, flood, pre, stop) {
  const sock = c.socket;
  let stopped = false;
  void stop.then(() => (stopped = true));
  let sent = 0;
  let built = pre.built;
  for (let i = 0; !stopped && !c.isEnded() && sent < flood.count; i++) {
    let batch = pre.batches[i];
    if (!batch) {
      const recs = [];
      for (let j = 0; j < 500 && built < flood.count; j++, built++) recs.push(flood.record(c));
      batch = Buffer.concat(recs);
    }
    sent += Math.min(500, flood.count - sent);
    if (!sock.write(batch)) await Promise.race([new Promise((r) => sock.once('drain', r)), stop]);
  }
  return sent;
}

async function measure(peer, flood) {
  const good = await goodClient(peer.port);
  await sleep(500);
  const c = await scriptedClient(peer.port, { version: 'TLSv1.3' });
  c.pauseReading(); // never reads (until the end, to see whether the proxy closed it)
  // What the good client alone costs the proxy: subtracted from the flood's CPU, and the level "idle" returns to.
  const base0 = peer.cpuMs();
  await sleep(2000);
  const baseMsPerWindow = ((peer.cpuMs() - base0) / 2000) * WINDOW_MS;
  const pre = prebuild(c, flood);
  const cpu0 = peer.cpuMs();
  const rss0 = peer.rssKiB();
  let rssPeak = rss0;
  let stopSending;
  const stop = new Promise((r) => (stopSending = r));
  good.reset();
  const t0 = performance.now();
  const sending = sendFlood(c, flood, pre, stop);
  // Idle again: the proxy's CPU is back to what the good client alone costs (it has taken the whole flood, cut it
  // off, or stopped reading it).
  // Sampled every 50 ms; idle from the start of the first WINDOW_MS whose CPU is at the good client's level.
  let idleAt;
  const samples = [{ at: t0, cpu: cpu0 }];
  for (;;) {
    await sleep(50);
    rssPeak = Math.max(rssPeak, peer.rssKiB());
    const now = performance.now();
    samples.push({ at: now, cpu: peer.cpuMs() });
    const from = samples.find((s) => s.at >= now - WINDOW_MS - 1);
    if (now - t0 >= WINDOW_MS && from && samples.at(-1).cpu - from.cpu <= ((now - from.at) / WINDOW_MS) * (baseMsPerWindow * 1.5 + 5)) {
      idleAt = from.at;
      break;
    }
    if (now - t0 > MAX_WAIT_MS) {
      idleAt = now;
      break;
    }
  }
  stopSending();
  const sent = await sending;
  const cpuS = Math.max(0, peer.cpuMs() - cpu0 - (baseMsPerWindow / WINDOW_MS) * (performance.now() - t0)) / 1000;
  const worstEcho = await good.worst();
  // Did the proxy end the connection? Read now: an alert and FIN (or a reset) say so.
  c.resumeReading();
  const cutOff = (await c.ended(3000)) !== undefined;
  c.destroy();
  good.close();
  await sleep(2000);
  const rssAfter = peer.rssKiB();
  return {
    sent,
    cutOff,
    cpuS,
    rssPeakMiB: (rssPeak - rss0) / 1024,
    rssAfterMiB: (rssAfter - rss0) / 1024,
    idleS: (idleAt - t0) / 1000,
    echoMs: worstEcho,
  };
}

const t0 = Date.now();
const dir = tempDir('bench-floods');
const { certFile, keyFile } = await makeCert(dir, 'ec');
const pem = path.join(dir, 'cert+key.pem');
fs.writeFileSync(pem, fs.readFileSync(certFile, 'utf8') + fs.readFileSync(keyFile, 'utf8'));
const backend = await echoBackend();
const wanted = opt.peers.split(',');
const results = {};
const about = [];
for (const def of PEERS.filter((p) => wanted.includes(p.name))) {
  const bin = findBin(def);
  if (!bin) {
    about.push(`${def.name}: not installed`);
    continue;
  }
  // Iron Socket as the floods were reported against: user mode, 2 relay workers.
  const peerDef =
    def.name === 'ironsocket'
      ? {
          ...def,
          command: (ctx) => {
            const c = def.command(ctx);
            c[1].push('--workers', '2');
            return c;
          },
        }
      : def;
  const version = await def.version(bin);
  about.push(`${def.name} ${version ?? '(version unknown)'}`);
  results[def.name] = {};
  for (const flood of FLOODS) {
    // A fresh process per flood: growth left by one flood is not charged to the next.
    const peer = await startPeer(peerDef, { bin, dir, backendPort: backend.port, certFile, keyFile, pem, ktls: 'off' });
    try {
      const r = await measure(peer, flood);
      results[def.name][flood.name] = r;
      console.log(
        `${def.name}: ${flood.count} ${flood.name}: sent ${r.sent}${r.cutOff ? ' (then cut off by the proxy)' : ''}, CPU ${r.cpuS.toFixed(2)} s, ` +
          `RSS +${r.rssPeakMiB.toFixed(1)} MiB at the peak, +${r.rssAfterMiB.toFixed(1)} MiB after, idle after ${r.idleS.toFixed(2)} s, worst echo ${r.echoMs.toFixed(0)} ms`,
      );
    } catch (e) {
      console.error(`${def.name}: ${flood.name}: not measured: ${e.stack ?? e}`);
    } finally {
      await peer.stop();
    }
  }
}
backend.close();

// [key, label, digits, noise]: the goal is each Iron Socket figure within 1.5× HAProxy's, or within `noise` of it
// (ratios of figures near zero say nothing: a few ms of CPU, a GC's worth of RSS, a scheduler tick of latency).
const FIELDS = [
  ['cpuS', 'proxy CPU s', 2, 0.05],
  ['rssPeakMiB', 'RSS growth at the peak, MiB', 1, 2],
  ['rssAfterMiB', 'RSS growth after the connection, MiB', 1, 2],
  ['idleS', 's until idle again', 2, 0.2],
  ['echoMs', "good client's worst echo, ms", 0, 50],
];
const GOAL = 1.5;
const names = Object.keys(results);
const both = names.includes('haproxy') && names.includes('ironsocket');
const ratio = (a, b) => (b > 0 ? (a / b).toFixed(2) : a > 0 ? '∞' : '1.00');
const lines = [
  `| flood | figure | ${names.join(' | ')}${both ? ` | ironsocket / haproxy | goal (≤ ${GOAL}× or within noise)` : ''} |`,
  `|---|---|${names.map(() => '---:|').join('')}${both ? '---:|---|' : ''}`,
];
let missed = 0;
for (const flood of FLOODS) {
  for (const [key, label, digits, noise] of FIELDS) {
    const cells = names.map((n) => results[n][flood.name]?.[key]);
    const row = `| ${flood.count} ${flood.name} | ${label} | ${cells.map((v) => (v === undefined ? 'error' : v.toFixed(digits))).join(' | ')}`;
    if (!both) {
      lines.push(`${row} |`);
      continue;
    }
    const ours = results.ironsocket[flood.name]?.[key];
    const theirs = results.haproxy[flood.name]?.[key];
    const met = ours !== undefined && theirs !== undefined && (ours <= GOAL * Math.max(theirs, 0) || ours - theirs <= noise);
    if (!met) missed++;
    lines.push(`${row} | ${ratio(ours ?? NaN, theirs ?? NaN)} | ${met ? 'met' : '**missed**'} (noise ${noise}) |`);
  }
  const cut = names.map(
    (n) => `${n} ${results[n][flood.name]?.cutOff ? `ended the connection (${results[n][flood.name].sent} sent)` : `took all ${flood.count} and kept it open`}`,
  );
  lines.push(`| ${flood.count} ${flood.name} | outcome | ${cut.join('; ')} |${' |'.repeat(names.length - 1 + (both ? 2 : 0))}`);
}
if (both) lines.push('', missed ? `Goal missed on ${missed} figure(s).` : `Goal met on every figure.`);
// A figure that could not be measured is a failure (a slow one is not: these are figures, not assertions).
const unmeasured = names.flatMap((n) => FLOODS.filter((f) => !results[n][f.name]).map((f) => `${n}: ${f.name}`));
const load = os
  .loadavg()
  .map((l) => l.toFixed(2))
  .join(' ');
const header = `## ${new Date().toISOString().replace(/\.\d+Z$/, 'Z')} — \`node scripts/bench-floods.mjs${opt.quick ? ' --quick' : ''}\`

Post-handshake floods (issue 16): one TLS 1.3 client floods records without data and never reads; a good client
echoes 16 bytes every 20 ms meanwhile. Iron Socket in user mode with 2 relay workers. Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? 'CPU'}, Node ${process.version}, load ${load}. Took ${Math.round((Date.now() - t0) / 1000)} s.
${about.map((a) => `- ${a}`).join('\n')}
`;
const section = `${header}\n${lines.join('\n')}\n`;
console.log(`\n${section}`);
if (opt.write) {
  const file = path.join(import.meta.dirname, '..', 'BENCHMARKS.md');
  const old = fs.readFileSync(file, 'utf8');
  const at = old.indexOf('\n## ');
  fs.writeFileSync(file, at < 0 ? `${old.trimEnd()}\n\n${section}` : `${old.slice(0, at + 1)}${section}\n${old.slice(at + 1)}`);
  console.log('written to BENCHMARKS.md');
}
if (unmeasured.length) {
  console.error(`bench:floods: not measured: ${unmeasured.join('; ')}`);
  process.exitCode = 1;
}
