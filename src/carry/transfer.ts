// Moves live connections between a relay loop and the upgrade bridge in small batches, so each one pauses only for its batch.
import { sys } from '../kernel/libc.js';
import type { RelayLoop } from '../relay/loop.js';
import { addCounts, type CarriedConnection, type Reclaimed } from '../relay/protocol.js';
import type { Migrated } from '../relay/relay.js';
import { BATCH, LINK_PROTOCOL, type Link, type LinkEvent } from './link.js';
import { checkPair, rejectPair, wipeCarried } from './restore.js';

/** Hands each message on the link to `on` while `active()`; a link that closes ends it through `fail`. */
function watchLink(
  loop: RelayLoop,
  link: Link,
  active: () => boolean,
  fail: (why: string) => void,
  on: (ev: Extract<LinkEvent, { kind: 'message' }>) => void,
): void {
  loop.watch(link.fd, () => {
    while (active()) {
      const ev = link.receive();
      if (ev.kind === 'again') return;
      if (ev.kind === 'closed') return fail(`the upgrade bridge went away (${ev.reason})`);
      on(ev);
    }
  });
}

/** Closes this side's copies of fds that are now in flight to (or held by) the other process. */
function closeOurCopies(batch: CarriedConnection[]): void {
  for (const p of batch) {
    sys.close(p.clientFd);
    sys.close(p.backendFd);
  }
}

/**
 * Waits for the bridge's `ready` (unless another loop already saw it), then moves every connection
 * of `loop` into it, one acknowledged batch at a time (connections not yet moved keep flowing here).
 * Calls `done` once.
 */
export function migrate(loop: RelayLoop, link: Link, idleTimeoutMs: number, bridgeReady: boolean, done: (r: Migrated) => void, progress = () => {}): void {
  let moved = 0;
  let intoBridgeMs = 0;
  let ready = bridgeReady;
  let finished = false;
  const finish = (error?: string) => {
    if (finished) return;
    finished = true;
    loop.unwatch(link.fd);
    done({ moved, intoBridgeMs, error });
  };
  const next = () => {
    const frozenAt = Date.now();
    const batch = loop.detach(BATCH);
    if (batch.length === 0) return finish();
    const err = link.sendBatch({ op: 'adopt', count: batch.length, frozenAt, idleTimeoutMs }, batch);
    if (err) {
      // Nothing left this process: the connections carry on here.
      for (const p of batch) loop.adopt(p);
      wipeCarried(batch);
      return finish(err);
    }
    closeOurCopies(batch);
    wipeCarried(batch);
  };
  watchLink(
    loop,
    link,
    () => !finished,
    finish,
    (ev) => {
      const h = ev.header;
      if (!ready && h.op === 'ready') {
        if (h.protocol !== LINK_PROTOCOL) return finish(`the bridge on disk speaks link protocol ${h.protocol}, this image ${LINK_PROTOCOL}`);
        ready = true;
        next();
      } else if (ready && h.op === 'adopted') {
        moved += h.count;
        intoBridgeMs = Math.max(intoBridgeMs, h.stallMs);
        progress();
        next();
      } else {
        return finish(`unexpected "${h.op}" from the upgrade bridge`);
      }
    },
  );
  if (ready) next();
}

/**
 * Takes up to `max` connections back from the bridge into `loop`, batch by batch, checking each fd
 * before adopting it. Calls `done` once; the bridge exits after its last batch.
 */
export function reclaim(loop: RelayLoop, link: Link, max: number, done: (r: Reclaimed) => void, progress = () => {}): void {
  const r: Reclaimed = { connections: [], failed: [], closed: [], intoBridgeMs: 0, outOfBridgeMs: 0, bridgeDone: false };
  let taken = 0;
  let finished = false;
  const finish = (error?: string) => {
    if (finished) return;
    finished = true;
    loop.unwatch(link.fd);
    if (error) r.error = error;
    done(r);
  };
  const ask = () => {
    if (taken >= max) return finish();
    const err = link.send({ op: 'return', max: Math.min(BATCH, max - taken) });
    if (err) finish(err);
  };
  watchLink(
    loop,
    link,
    () => !finished,
    finish,
    (ev) => {
      const h = ev.header;
      if (h.op === 'ready') return; // a bridge that never got a connection
      if (h.op !== 'returned') return finish(`unexpected "${h.op}" from the upgrade bridge`);
      for (const p of ev.pairs) {
        const bad = checkPair(p);
        if (bad) {
          r.failed.push({ id: p.pair.info.id, reason: bad });
          rejectPair(p, loop.io);
        } else {
          loop.adopt(p);
          r.connections.push(p.pair.info);
        }
      }
      taken += ev.pairs.length;
      wipeCarried(ev.pairs);
      r.closed.push(...ev.closed);
      if (h.counts) addCounts((r.counts ??= {}), h.counts);
      r.intoBridgeMs = Math.max(r.intoBridgeMs, h.intoBridgeMs);
      r.outOfBridgeMs = Math.max(r.outOfBridgeMs, Date.now() - h.frozenAt);
      progress();
      if (!h.more) {
        r.bridgeDone = true;
        return finish();
      }
      ask();
    },
  );
  ask();
}
