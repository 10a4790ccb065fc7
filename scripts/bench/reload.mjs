// `npm run bench`'s reload rows: established echo streams through a peer while it reloads (Iron Socket: upgrades in
// place), the stall they see, the bytes they lose, and which process image holds them afterwards.
import tls from 'node:tls';
import { adminRequest } from '../../dist/admin/client.js';
import { sleep, upgradeBySignal, wrong } from './common.mjs';
import { holders, sameProcess, socketsOn } from './peers.mjs';

/** A fresh TLS connection through the peer: the pid of the peer process that accepted it. */
async function acceptedBy(peer) {
  const s = await new Promise((resolve, reject) => {
    const s = tls.connect({ port: peer.port, host: '127.0.0.1', rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    s.setTimeout(15_000, () => s.destroy(new Error('no handshake within 15 s')));
    s.once('secureConnect', () => resolve(s));
    s.once('error', reject);
  });
  try {
    const inode = socketsOn(peer.port).established.get(s.localPort);
    return (
      inode &&
      holders(
        peer.processes().map((p) => p.pid),
        new Set([inode]),
      ).get(inode)
    );
  } finally {
    s.destroy();
  }
}

const isIn = (procs, pid) => procs.some((p) => p.pid === pid && sameProcess(p));

/** A peer's own reload: its signal, then waits until new connections land on a new process or a new listener. */
export async function peerReload(peer, before) {
  const listenBefore = socketsOn(peer.port).listen;
  peer.signal(peer.reload.signal);
  let last = 'no answer yet';
  // Upper bounds for a saturated one-CPU guest (the kTLS lane), where 1000 streams leave little CPU for anything else.
  for (const end = Date.now() + 60_000; Date.now() < end; await sleep(100)) {
    if (!peer.alive()) throw new Error(`exited on ${peer.reload.signal}; its output:\n${peer.output()}`);
    const relistened = [...socketsOn(peer.port).listen].some((i) => !listenBefore.has(i));
    try {
      const pid = await acceptedBy(peer);
      if (pid && !isIn(before, pid)) return `new connections went to new process ${pid}`;
      if (pid && relistened) return `the same process ${pid} re-bound its listener and accepts`;
      last = `new connections still went to pre-reload process ${pid}`;
    } catch (e) {
      last = `a new connection failed: ${e.message}`;
    }
  }
  throw new Error(`no sign of a reload within 60 s after ${peer.reload.signal} (${last})`);
}

/**
 * K established echo streams through the peer, then its reload (Iron Socket: in-place upgrade): the largest gap any
 * stream saw (against a window without a reload), which process image holds the streams afterwards, and every byte
 * back. Fills `r` as it goes (so a wrong figure still shows in the table), then throws whatever is wrong.
 */
export async function reloadUnderLoad(peer, clients, r, ironsocket, { streams: K, periodMs: PERIOD_MS, chunk: STREAM_CHUNK, quietMs, holdMs }) {
  const all = (cmd, arg) => Promise.all(clients.map((c) => c(cmd, arg)));
  const share = Math.ceil(K / clients.length);
  const problems = [];
  const stall = (g) => Math.max(0, Math.max(...g.map((x) => x.maxGapMs)) - PERIOD_MS);
  const lagMs = (g) => Math.round(Math.max(...g.map((x) => x.loopLagMs)));
  let drained;
  let olds = [];
  let info;
  try {
    const opened = await Promise.all(
      clients.map((c, i) =>
        c('streamsOpen', { port: peer.port, n: Math.max(0, Math.min(share, K - i * share)), periodMs: PERIOD_MS, chunk: STREAM_CHUNK, seed: i }),
      ),
    );
    const ports = opened.flatMap((o) => o.ports);
    if (ports.length !== K) throw new Error(`only ${ports.length} of ${K} streams opened (${opened.find((o) => o.firstError)?.firstError})`);
    await sleep(2 * PERIOD_MS); // every stream has had an echo back
    await all('streamsMark');
    await sleep(quietMs);
    const quiet = await all('streamsGaps');
    r.stallBase = stall(quiet);

    const before = peer.processes();
    await all('streamsMark');
    const t = Date.now();
    let upgrade;
    let how;
    if (ironsocket) {
      try {
        upgrade = await upgradeBySignal(peer.admin, peer.pid, peer.alive).catch((e) => {
          throw peer.alive() ? e : new Error(`exited during the upgrade; its output:\n${peer.output()}`);
        });
        if (!upgrade.u.ok) throw new Error(`upgrade failed: ${upgrade.u.error}`);
        how = `gen ${upgrade.before.generation} → ${upgrade.after.generation}, pid ${upgrade.before.pid} → ${upgrade.after.pid}, moved ${upgrade.u.moved}, failed to restore ${upgrade.u.failedToRestore ?? 0}, closed in the bridge ${upgrade.u.closedDuringUpgrade ?? 0} (${upgrade.u.closedDuringUpgradeWithWarning ?? 0} with a warning)`;
        r.proxyStall = upgrade.u.stallMs;
      } catch (e) {
        if (!peer.alive()) throw e;
        problems.push(e.message); // still serving: go on, and count what the failed upgrade did to the streams
        how = `FAILED: ${e.message.split('\n')[0]}`;
      }
    } else {
      how = await peerReload(peer, before);
      r.proxyStall = 'n/a';
    }
    const reloadMs = Date.now() - t;
    await sleep(Math.max(1000, quietMs - reloadMs)); // the window: the reload, 1 s after, and no shorter than the quiet one
    const during = await all('streamsGaps');
    r.stall = stall(during);

    // Some time later, who holds the established streams: the process image from before the reload, or a new one?
    await sleep(Math.max(0, t + reloadMs + holdMs - Date.now()));
    const established = socketsOn(peer.port).established;
    const inodes = new Set(ports.map((p) => established.get(p)).filter(Boolean));
    const held = holders(
      peer.processes().map((p) => p.pid),
      inodes,
    );
    let status;
    if (ironsocket) status = await adminRequest(peer.admin, 'status', undefined, 30_000);
    // An Iron Socket that answers with generation + 1 from the same pid has exec'd: that pid is the new image.
    const execd = upgrade && status.pid === peer.pid && status.generation === upgrade.before.generation + 1;
    const perPid = new Map();
    for (const pid of held.values()) perPid.set(pid, (perPid.get(pid) ?? 0) + 1);
    const isOld = (pid) => isIn(before, pid) && !(execd && pid === peer.pid);
    olds = before.filter((p) => perPid.has(p.pid) && isOld(p.pid));
    r.onNew = [...perPid].reduce((n, [pid, k]) => n + (isOld(pid) ? 0 : k), 0);
    r.oldProcs = olds.length;
    const where = [...perPid].map(([pid, k]) => `${k} by ${isOld(pid) ? 'pre-reload' : 'new'} ${pid === peer.pid ? 'main ' : ''}process ${pid}`);
    info = `${peer.reload.signal}: reload took ${(reloadMs / 1000).toFixed(2)} s (${how}); client loop lag max ${lagMs(quiet)} ms without, ${lagMs(during)} ms with the reload; ${holdMs / 1000} s later the ${K} streams were held ${where.join(', ') || 'by nobody'}`;
    if (ironsocket) {
      const mine = new Set(ports);
      const listed = status.connections.filter((c) => mine.has(Number(c.client.slice(c.client.lastIndexOf(':') + 1)))).length;
      info += `; status: generation ${status.generation}, ${listed} of them listed`;
      if (upgrade && !execd)
        problems.push(
          `after the upgrade status says pid ${status.pid} generation ${status.generation} (was pid ${peer.pid} generation ${upgrade.before.generation})`,
        );
      if (upgrade && (listed !== K || r.onNew !== K))
        problems.push(`only ${Math.min(listed, r.onNew)} of ${K} established streams on the new image (status lists ${listed}, the pid holds ${r.onNew})`);
    }

    drained = await all('streamsDrain', { timeoutMs: 30_000 });
  } finally {
    await all('streamsClose');
  }
  const sum = (f) => drained.reduce((n, d) => n + f(d), 0);
  r.lost = sum((d) => d.sent - d.received);
  r.cut = sum((d) => d.cut);
  const reasons = [...new Set(drained.flatMap((d) => d.reasons))];
  const badBytes = sum((d) => d.badStreams) + sum((d) => d.lostOnUncut) > 0;
  if (sum((d) => d.badStreams)) problems.push(`${sum((d) => d.badStreams)} streams had a wrong byte`);
  if (sum((d) => d.lostOnUncut)) problems.push(`${sum((d) => d.lostOnUncut)} bytes never came back on streams that were not cut`);
  if (ironsocket && r.lost) problems.push(`${r.lost} bytes lost across the upgrade`);
  if (ironsocket && r.cut) problems.push(`${r.cut} streams cut by the upgrade (${reasons.join('; ')})`);
  if (r.cut) info += `; ${r.cut} streams cut (${reasons.join('; ')})`;
  // Does the old code let go once its connections are gone? (stunnel's one process is the server itself: skip.)
  const leaving = olds.filter((p) => p.pid !== peer.pid);
  if (leaving.length) {
    const t = Date.now();
    while (leaving.some(sameProcess) && Date.now() - t < 3000) await sleep(20);
    const left = leaving.filter(sameProcess).length;
    info += left
      ? `; ${left} of the ${leaving.length} pre-reload processes still running 3 s after the streams closed`
      : `; the ${leaving.length} pre-reload process${leaving.length > 1 ? 'es' : ''} holding them exited ${((Date.now() - t) / 1000).toFixed(2)} s after the streams closed`;
  }
  r.reload = info;
  // Iron Socket runs at --log-level warn: whatever it said is the first thing to read when the upgrade went wrong.
  if (ironsocket && problems.length) problems.push(`its log during the reload: ${peer.output().trim().split('\n').filter((l) => !/without close_notify \(truncation\)/.test(l)).slice(-12).join(' | ')}`);
  if (problems.length) throw (badBytes ? wrong : (m) => new Error(m))(problems.join('; '));
}
