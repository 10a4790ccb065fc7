// The data plane: a worker thread running a synchronous epoll loop over every established connection.
import { parentPort, receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import { sys } from '../kernel/libc.js';
import { TlsRecordIo } from '../kernel/ktls.js';
import { EPOLL_EVENT_SIZE, decodeEvent, encodeEvent } from '../kernel/poller.js';
import { KernelClient } from './kernel-client.js';
import { Pair, type PairHost } from './pair.js';
import type { CarriedPair, ToWorker, FromWorker, UserState, WorkerInit } from './protocol.js';
import { UserClient } from './user-client.js';
import { suiteByName } from '../record/suites.js';

const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;
const MAX_EVENTS = 256;

const port = parentPort as MessagePort;
const init = workerData as WorkerInit;
const ep = sys.epollCreate();
const wake = init.wakeFd;
const events = Buffer.allocUnsafeSlow(MAX_EVENTS * EPOLL_EVENT_SIZE);
const ev = Buffer.alloc(EPOLL_EVENT_SIZE);
const scratch = Buffer.allocUnsafeSlow(64 * 1024);
const io = new TlsRecordIo();
const byFd = new Map<number, { pair: Pair; side: 'client' | 'backend' }>();
const registered = new Map<number, number>(); // fd -> events currently in epoll
const pairs = new Map<string, Pair>();
let running = true;
/** While frozen the loop waits only for messages; sockets keep their data in the kernel. */
let frozen = false;
const wakeOnly = sys.epollCreate();

sys.epollCtl(ep, EPOLL_CTL_ADD, wake, encodeEvent(ev, 0x001, wake));
sys.epollCtl(wakeOnly, EPOLL_CTL_ADD, wake, encodeEvent(ev, 0x001, wake));

function send(msg: FromWorker): void {
  port.postMessage(msg);
}

const host: PairHost = {
  interest(fd, want) {
    const cur = registered.get(fd);
    // An fd with no interest leaves the set entirely: otherwise HUP/ERR would be reported forever.
    if (want === 0) {
      if (cur !== undefined) {
        sys.epollCtl(ep, EPOLL_CTL_DEL, fd, encodeEvent(ev, 0, fd));
        registered.delete(fd);
      }
      return;
    }
    sys.epollCtl(ep, cur === undefined ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, encodeEvent(ev, want, fd));
    registered.set(fd, want);
  },
  closed(pair, reason, level) {
    for (const fd of [pair.client.fd, pair.backendFd]) {
      if (registered.has(fd)) {
        try {
          sys.epollCtl(ep, EPOLL_CTL_DEL, fd, encodeEvent(ev, 0, fd));
        } catch {
          /* already gone */
        }
        registered.delete(fd);
      }
      byFd.delete(fd);
      sys.close(fd);
    }
    pairs.delete(pair.info.id);
    send({ op: 'closed', id: pair.info.id, reason, level, bytesIn: pair.bytesIn, bytesOut: pair.bytesOut });
  },
  log(level, id, msg) {
    send({ op: 'log', level, id, msg });
  },
};

/** Rebuilds userspace record state from the message, zeroing the transferred copies. */
function userClient(fd: number, u: UserState): UserClient {
  const suite = suiteByName(u.suite, u.version);
  if (!suite) throw new Error(`unknown suite ${u.suite}`);
  const buf = (a: Uint8Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  const secrets = u.secrets ? { client: Buffer.from(u.secrets.client), server: Buffer.from(u.secrets.server) } : undefined;
  u.secrets?.client.fill(0);
  u.secrets?.server.fill(0);
  // UserClient copies keys into its record protection and zeroes the ones it was given.
  const opt = (a: Uint8Array | undefined) => (a ? Buffer.from(a) : undefined);
  return new UserClient(fd, {
    suite,
    version: u.version,
    tx: { key: buf(u.tx.key), iv: buf(u.tx.iv), seq: u.tx.seq },
    rx: { key: buf(u.rx.key), iv: buf(u.rx.iv), seq: u.rx.seq },
    secrets,
    inbox: opt(u.inbox),
    plain: opt(u.plain),
    out: opt(u.out),
  });
}

function handle(msg: ToWorker): void {
  switch (msg.op) {
    case 'add': {
      const client = msg.user ? userClient(msg.clientFd, msg.user) : new KernelClient(msg.clientFd, io, msg.info.version);
      const pair = new Pair(msg.info, client, msg.backendFd, host, msg.restored);
      pairs.set(msg.info.id, pair);
      byFd.set(msg.clientFd, { pair, side: 'client' });
      byFd.set(msg.backendFd, { pair, side: 'backend' });
      pair.start();
      break;
    }
    case 'stats':
      send({
        op: 'stats',
        seq: msg.seq,
        connections: [...pairs.values()].map((p) => ({ id: p.info.id, bytesIn: p.bytesIn, bytesOut: p.bytesOut, lastActivity: p.lastActivity })),
      });
      break;
    case 'freeze':
      freeze(msg.seq);
      break;
    case 'thaw':
      thaw();
      break;
    case 'abort':
      pairs.get(msg.id)?.abort(msg.reason, msg.alert);
      break;
    case 'stop':
      for (const p of [...pairs.values()]) {
        p.client.closeNotify();
        p.abort('proxy shutting down');
      }
      running = false;
      break;
  }
}

/** Stops dispatching fd events (an upgrade is taking the connections) and reports their state. */
function freeze(seq: number): void {
  frozen = true;
  const carried: CarriedPair[] = [];
  for (const p of pairs.values()) {
    const user = p.client instanceof UserClient ? p.client.snapshot() : undefined;
    carried.push({
      clientFd: p.client.fd,
      backendFd: p.backendFd,
      pair: p.snapshot(),
      user: user && {
        ...user,
        tx: { ...user.tx, key: new Uint8Array(user.tx.key), iv: new Uint8Array(user.tx.iv) },
        rx: { ...user.rx, key: new Uint8Array(user.rx.key), iv: new Uint8Array(user.rx.iv) },
        secrets: user.secrets && { client: new Uint8Array(user.secrets.client), server: new Uint8Array(user.secrets.server) },
      },
    });
    if (user) for (const b of [user.tx.key, user.tx.iv, user.rx.key, user.rx.iv, user.secrets?.client, user.secrets?.server]) b?.fill(0);
  }
  send({ op: 'frozen', seq, pairs: carried });
  for (const c of carried)
    for (const b of [c.user?.tx.key, c.user?.tx.iv, c.user?.rx.key, c.user?.rx.iv, c.user?.secrets?.client, c.user?.secrets?.server]) b?.fill(0);
}

function thaw(): void {
  frozen = false;
  for (const p of pairs.values()) p.start();
}

function drainMessages(): void {
  for (;;) {
    const m = receiveMessageOnPort(port);
    if (!m) return;
    handle(m.message as ToWorker);
  }
}

function checkIdle(now: number): void {
  if (init.idleTimeoutMs <= 0) return;
  for (const p of [...pairs.values()]) {
    if (now - p.lastActivity > init.idleTimeoutMs) p.abort(`idle for more than ${init.idleTimeoutMs} ms`);
  }
}

let lastIdleCheck = Date.now();
drainMessages();
while (running) {
  const n = sys.epollWait(frozen ? wakeOnly : ep, events, MAX_EVENTS, 1000);
  for (let i = 0; i < n; i++) {
    const { events: e, fd } = decodeEvent(events, i);
    if (fd === wake) {
      sys.read(wake, scratch, 8);
      continue;
    }
    const ent = byFd.get(fd);
    if (!ent) continue;
    if (ent.side === 'client') ent.pair.onClient(e, scratch);
    else ent.pair.onBackend(e, scratch);
  }
  drainMessages();
  const now = Date.now();
  if (!frozen && now - lastIdleCheck >= 1000) {
    lastIdleCheck = now;
    checkIdle(now);
  }
}
sys.close(ep);
send({ op: 'stopped' });
