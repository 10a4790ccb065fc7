// The data plane's event loop: a synchronous epoll loop over every established connection, run inside a worker thread.
import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { sys } from '../kernel/libc.js';
import { TlsRecordIo } from '../kernel/ktls.js';
import { EPOLL_EVENT_SIZE, decodeEvent, encodeEvent } from '../kernel/poller.js';
import { suiteByName } from '../record/suites.js';
import { KernelClient } from './kernel-client.js';
import { Pair, type PairHost, type PairInfo, type PairSnapshot } from './pair.js';
import type { CarriedPair, FromWorker, ToWorker, UserState } from './protocol.js';
import { UserClient } from './user-client.js';

const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;
const MAX_EVENTS = 256;

/** Rebuilds userspace record state from a message, zeroing the transferred copies. */
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

export class RelayLoop {
  readonly io = new TlsRecordIo();
  private readonly ep = sys.epollCreate();
  /** While frozen the loop waits only for messages; sockets keep their data in the kernel. */
  private readonly wakeOnly = sys.epollCreate();
  private readonly events = Buffer.allocUnsafeSlow(MAX_EVENTS * EPOLL_EVENT_SIZE);
  private readonly ev = Buffer.alloc(EPOLL_EVENT_SIZE);
  private readonly scratch = Buffer.allocUnsafeSlow(64 * 1024);
  private readonly byFd = new Map<number, { pair: Pair; side: 'client' | 'backend' }>();
  private readonly registered = new Map<number, number>(); // fd -> events currently in epoll
  private readonly pairs = new Map<string, Pair>();
  private running = true;
  private frozen = false;
  private readonly host: PairHost;

  constructor(
    private readonly port: MessagePort,
    private readonly wake: number,
    private idleTimeoutMs: number,
  ) {
    sys.epollCtl(this.ep, EPOLL_CTL_ADD, wake, encodeEvent(this.ev, 0x001, wake));
    sys.epollCtl(this.wakeOnly, EPOLL_CTL_ADD, wake, encodeEvent(this.ev, 0x001, wake));
    const { ep, ev, registered, byFd, pairs } = this;
    this.host = {
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
      closed: (pair, reason, level) => {
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
        this.send({ op: 'closed', id: pair.info.id, reason, level, bytesIn: pair.bytesIn, bytesOut: pair.bytesOut });
      },
      log: (level, id, msg) => this.send({ op: 'log', level, id, msg }),
    };
  }

  send(msg: FromWorker): void {
    this.port.postMessage(msg);
  }

  /** Starts relaying one connection (new, or carried from a previous image with its snapshot). */
  add(info: PairInfo, clientFd: number, backendFd: number, user?: UserState, restored?: PairSnapshot): void {
    const client = user ? userClient(clientFd, user) : new KernelClient(clientFd, this.io, info.version);
    const pair = new Pair(info, client, backendFd, this.host, restored);
    this.pairs.set(info.id, pair);
    this.byFd.set(clientFd, { pair, side: 'client' });
    this.byFd.set(backendFd, { pair, side: 'backend' });
    pair.start();
  }

  private handle(msg: ToWorker): void {
    switch (msg.op) {
      case 'add':
        this.add(msg.info, msg.clientFd, msg.backendFd, msg.user, msg.restored);
        break;
      case 'configure':
        this.idleTimeoutMs = msg.idleTimeoutMs;
        break;
      case 'stats':
        this.send({
          op: 'stats',
          seq: msg.seq,
          connections: [...this.pairs.values()].map((p) => ({ id: p.info.id, bytesIn: p.bytesIn, bytesOut: p.bytesOut, lastActivity: p.lastActivity })),
        });
        break;
      case 'freeze':
        this.freeze(msg.seq);
        break;
      case 'thaw':
        this.frozen = false;
        for (const p of this.pairs.values()) p.start();
        break;
      case 'stop':
        for (const p of [...this.pairs.values()]) {
          p.client.closeNotify();
          p.abort('proxy shutting down');
        }
        this.running = false;
        break;
    }
  }

  /** Stops dispatching fd events (an upgrade is taking the connections) and reports their state. */
  private freeze(seq: number): void {
    this.frozen = true;
    const carried: CarriedPair[] = [];
    for (const p of this.pairs.values()) {
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
    this.send({ op: 'frozen', seq, pairs: carried });
    for (const c of carried)
      for (const b of [c.user?.tx.key, c.user?.tx.iv, c.user?.rx.key, c.user?.rx.iv, c.user?.secrets?.client, c.user?.secrets?.server]) b?.fill(0);
  }

  private drainMessages(): void {
    for (;;) {
      const m = receiveMessageOnPort(this.port);
      if (!m) return;
      this.handle(m.message as ToWorker);
    }
  }

  private checkIdle(now: number): void {
    if (this.idleTimeoutMs <= 0) return;
    for (const p of [...this.pairs.values()]) {
      if (now - p.lastActivity > this.idleTimeoutMs) p.abort(`idle for more than ${this.idleTimeoutMs} ms`);
    }
  }

  /** Runs until told to stop; returns after closing its epoll instances. */
  run(): void {
    let lastIdleCheck = Date.now();
    const { events, scratch, byFd } = this;
    this.drainMessages();
    while (this.running) {
      const n = sys.epollWait(this.frozen ? this.wakeOnly : this.ep, events, MAX_EVENTS, 1000);
      for (let i = 0; i < n; i++) {
        const { events: e, fd } = decodeEvent(events, i);
        if (fd === this.wake) {
          sys.read(this.wake, scratch, 8);
          continue;
        }
        const ent = byFd.get(fd);
        if (!ent) continue;
        if (ent.side === 'client') ent.pair.onClient(e, scratch);
        else ent.pair.onBackend(e, scratch);
      }
      this.drainMessages();
      const now = Date.now();
      if (!this.frozen && now - lastIdleCheck >= 1000) {
        lastIdleCheck = now;
        this.checkIdle(now);
      }
    }
    sys.close(this.ep);
    sys.close(this.wakeOnly);
    this.send({ op: 'stopped' });
  }
}
