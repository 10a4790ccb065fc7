// The upgrade bridge: a short-lived process that relays every live connection while the proxy execs its new code, then hands them back.
import { createLogger } from '../core/log.js';
import { sys } from '../kernel/libc.js';
import { RelayLoop, type Control } from '../relay/loop.js';
import type { CarriedConnection, ClosedElsewhere } from '../relay/protocol.js';
import { LINK_PROTOCOL, Link, type ServeOrder } from './link.js';
import { upgradeHooks } from './hooks.js';
import { wipeCarried } from './restore.js';
import { BridgeDoor, bootHandshaker } from './bridge-door.js';
import { BRIDGE_DOOR_FLAG, decodeDoorOrder } from './door.js';

/** The proxy passes its end of the link as fd 3 (a seqpacket socket); nothing secret is in argv or env. */
const LINK_FD = 3;

// Before any connection (and its keys) arrives: spawned by exec, the bridge starts dumpable.
sys.setDumpable(false);
process.title = 'ironsocket-bridge';
upgradeHooks.bridgeStarted?.();

const log = createLogger('info').child({ bridge: process.pid });
const closed: ClosedElsewhere[] = [];

const control: Control = {
  wakeFd: -1,
  receive: () => undefined,
  send(msg) {
    if (msg.op === 'closed') {
      door?.closed(msg.id);
      const { id, client, listener } = msg;
      closed.push({ id, client, listener, reason: msg.reason, cause: msg.cause, level: msg.level });
      log[msg.level]({ conn: id, client, listener, bytesIn: msg.bytesIn, bytesOut: msg.bytesOut }, `connection closed during the upgrade: ${msg.reason}`);
    } else if (msg.op === 'log') {
      log[msg.level]({ conn: msg.id }, msg.msg);
    }
  },
};

sys.setCloexec(LINK_FD, true);
sys.setNonBlocking(LINK_FD);
const link = new Link(LINK_FD);
const loop = new RelayLoop(control, 0);
let intoBridgeMs = 0;
/** New clients accepted and handshaken here while the image execs (when the image asked: `serve`). */
let door: BridgeDoor | undefined;
/** Its handshake worker, booting from the start when the image said it will ask us to accept. */
const handshaker = process.argv.includes(BRIDGE_DOOR_FLAG) ? bootHandshaker() : undefined;
/** A `return` that found nothing to return yet but handshakes in progress: answered when one ends. */
let pendingReturn: number | undefined;

let linkOpen = true;
function closeLink(): void {
  if (!linkOpen) return;
  linkOpen = false;
  loop.unwatch(LINK_FD);
  sys.close(LINK_FD);
}

/** Nothing left to relay or to finish: the bridge may exit. */
const empty = () => loop.size === 0 && (door?.done ?? true);

/** A batch's clients, as the test seam names them. */
const clientsOf = (batch: CarriedConnection[]) => batch.map((p) => p.pair.info.client);

/** The image went away without taking its connections back: keep relaying them until they end. */
function orphaned(reason: string): void {
  door?.stop();
  pendingReturn = undefined;
  closeLink();
  if (empty()) return loop.end();
  log.error({ connections: loop.size }, `the proxy image left the upgrade bridge (${reason}); relaying its connections until they close`);
  loop.onTick(() => {
    if (!empty()) return true;
    loop.end();
    return false;
  });
}

/** Starts accepting on the image's listening sockets with its settings (the order's keys are wiped either way). */
function openDoor(serve: ServeOrder): void {
  try {
    const order = decodeDoorOrder(serve.raw);
    door = new BridgeDoor(
      loop,
      order,
      serve.listenerFds,
      {
        serving: () => {
          const err = link.send({ op: 'serving' });
          if (err) orphaned(err);
        },
        settled: () => {
          if (pendingReturn !== undefined) answerReturn(pendingReturn);
        },
      },
      log,
      handshaker,
    );
  } catch (e) {
    // The image waits for `serving` in vain, tells us to stop, and pauses accepting as it always did.
    log.error(`upgrade bridge: cannot accept for the image: ${(e as Error).message}`);
    for (const fd of serve.listenerFds) sys.close(fd);
  } finally {
    serve.raw.fill(0);
  }
}

/** Hands back up to `max` connections; with none to hand back while handshakes are in progress, waits for one. */
function answerReturn(max: number): void {
  door?.stop();
  const frozenAt = Date.now();
  const batch = loop.detach(max);
  const handshaking = door?.handshaking ?? 0;
  if (batch.length === 0 && handshaking > 0) {
    pendingReturn = max;
    return;
  }
  pendingReturn = undefined;
  const more = loop.size > 0 || handshaking > 0;
  const counts = door?.takeCounts();
  if (batch.length) upgradeHooks.bridgeBatch?.('return', clientsOf(batch));
  const err = link.sendBatch({ op: 'returned', count: batch.length, frozenAt, more, intoBridgeMs, counts }, batch, closed.splice(0));
  if (err) {
    for (const p of batch) loop.adopt(p);
    wipeCarried(batch);
    return orphaned(err);
  }
  for (const p of batch) {
    sys.close(p.clientFd);
    sys.close(p.backendFd);
  }
  wipeCarried(batch);
  if (!more) {
    closeLink();
    loop.end();
  }
}

loop.watch(LINK_FD, () => {
  while (linkOpen) {
    const ev = link.receive();
    if (ev.kind === 'again') return;
    if (ev.kind === 'closed') return orphaned(ev.reason);
    const h = ev.header;
    if (h.op === 'serve' && ev.serve) {
      if (door) {
        ev.serve.raw.fill(0);
        for (const fd of ev.serve.listenerFds) sys.close(fd);
        log.error('a second "serve" on the bridge link');
        return orphaned('protocol error');
      }
      openDoor(ev.serve);
    } else if (h.op === 'accept' && door) {
      door.accept(h.firstId);
    } else if (h.op === 'stop-accepting') {
      const r = door?.stop() ?? { nextId: 0, counts: {} };
      const err = link.send({ op: 'stopped-accepting', ...r });
      if (err) return orphaned(err);
    } else if (h.op === 'adopt') {
      upgradeHooks.bridgeBatch?.('adopt', clientsOf(ev.pairs));
      door?.adopted(ev.pairs);
      loop.configure(h.idleTimeoutMs);
      for (const p of ev.pairs) loop.adopt(p);
      wipeCarried(ev.pairs);
      const stallMs = Date.now() - h.frozenAt;
      intoBridgeMs = Math.max(intoBridgeMs, stallMs);
      const err = link.send({ op: 'adopted', count: ev.pairs.length, stallMs });
      if (err) return orphaned(err);
    } else if (h.op === 'return') {
      answerReturn(h.max);
    } else {
      log.error(`unexpected "${h.op}" on the bridge link`);
      return orphaned('protocol error');
    }
  }
});

const hello = link.send({ op: 'ready', protocol: LINK_PROTOCOL, pid: process.pid, accepts: true });
if (hello) throw new Error(hello);
loop.run();
process.exit(0);
