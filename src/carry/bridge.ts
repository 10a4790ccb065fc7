// The upgrade bridge: a short-lived process that relays every live connection while the proxy execs its new code, then hands them back.
import { createLogger } from '../core/log.js';
import { sys } from '../kernel/libc.js';
import { RelayLoop, type Control } from '../relay/loop.js';
import type { CarriedConnection, ClosedElsewhere } from '../relay/protocol.js';
import { LINK_PROTOCOL, Link } from './link.js';
import { upgradeHooks } from './hooks.js';
import { wipeCarried } from './restore.js';

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
      closed.push({ id: msg.id, reason: msg.reason, cause: msg.cause, level: msg.level });
      log[msg.level]({ conn: msg.id, bytesIn: msg.bytesIn, bytesOut: msg.bytesOut }, `connection closed during the upgrade: ${msg.reason}`);
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

/** A batch's clients, as the test seam names them. */
const clientsOf = (batch: CarriedConnection[]) => batch.map((p) => p.pair.info.client);

/** The image went away without taking its connections back: keep relaying them until they end. */
function orphaned(reason: string): void {
  loop.unwatch(LINK_FD);
  sys.close(LINK_FD);
  if (loop.size === 0) return loop.end();
  log.error({ connections: loop.size }, `the proxy image left the upgrade bridge (${reason}); relaying its connections until they close`);
  loop.onTick(() => {
    if (loop.size > 0) return true;
    loop.end();
    return false;
  });
}

loop.watch(LINK_FD, () => {
  for (;;) {
    const ev = link.receive();
    if (ev.kind === 'again') return;
    if (ev.kind === 'closed') return orphaned(ev.reason);
    const h = ev.header;
    if (h.op === 'adopt') {
      upgradeHooks.bridgeBatch?.('adopt', clientsOf(ev.pairs));
      loop.configure(h.idleTimeoutMs);
      for (const p of ev.pairs) loop.adopt(p);
      wipeCarried(ev.pairs);
      const stallMs = Date.now() - h.frozenAt;
      intoBridgeMs = Math.max(intoBridgeMs, stallMs);
      const err = link.send({ op: 'adopted', count: ev.pairs.length, stallMs });
      if (err) return orphaned(err);
    } else if (h.op === 'return') {
      const frozenAt = Date.now();
      const batch = loop.detach(h.max);
      const more = loop.size > 0;
      if (batch.length) upgradeHooks.bridgeBatch?.('return', clientsOf(batch));
      const err = link.sendBatch({ op: 'returned', count: batch.length, frozenAt, more, intoBridgeMs }, batch, closed.splice(0));
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
        loop.unwatch(LINK_FD);
        sys.close(LINK_FD);
        return loop.end();
      }
    } else {
      log.error(`unexpected "${h.op}" on the bridge link`);
      return orphaned('protocol error');
    }
  }
});

const hello = link.send({ op: 'ready', protocol: LINK_PROTOCOL, pid: process.pid });
if (hello) throw new Error(hello);
loop.run();
process.exit(0);
