// The data plane's event loop: a synchronous epoll loop over every established connection (in a worker thread, or the upgrade bridge).
import { getHeapStatistics } from 'node:v8';
import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { sys } from '../kernel/libc.js';
import { TlsRecordIo } from '../kernel/ktls.js';
import { EPOLLIN, EPOLL_EVENT_SIZE, decodeEvent, encodeEvent } from '../kernel/poller.js';
import { suiteByName } from '../record/suites.js';
import { KernelClient } from './kernel-client.js';
import { LingeringCloses } from './lingering.js';
import { Pair, type OwnPipes, type PairHost } from './pair.js';
import { carriedRecords, ownedCopy, type CarriedConnection, type FromWorker, type ToWorker } from './protocol.js';
import { PipePool } from './pipes.js';
import type { StoreHook, StoreHookLog, StoredFds } from './store-hook.js';
import { UserClient } from './user-client.js';
import { assertAgreeingMode, type ClientRecords, type ConnectionInfo, type ConnectionSnapshot, type UserState } from '../core/connection.js';

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
    handshake: opt(u.handshake),
  });
}

/** How the loop hears from and talks to whoever runs it (the main thread, or the bridge process). */
export interface Control {
  /** An fd that becomes readable when messages are waiting (drained by `receive`), or -1 for none. */
  readonly wakeFd: number;
  /** Called when wakeFd fired, before messages are drained. */
  woken?(): void;
  receive(): ToWorker | undefined;
  send(msg: FromWorker): void;
}

/** The control of a loop in a worker thread: messages on its port, an eventfd to wake epoll. */
export function portControl(port: MessagePort, wakeFd: number): Control {
  const drain = Buffer.alloc(8);
  return {
    wakeFd,
    woken: () => void sys.read(wakeFd, drain, 8),
    receive: () => receiveMessageOnPort(port)?.message as ToWorker | undefined,
    send: (msg) => port.postMessage(msg),
  };
}

export class RelayLoop {
  readonly io = new TlsRecordIo();
  private readonly ep = sys.epollCreate();
  private readonly events = Buffer.allocUnsafeSlow(MAX_EVENTS * EPOLL_EVENT_SIZE);
  private readonly ev = Buffer.alloc(EPOLL_EVENT_SIZE);
  private readonly scratch = Buffer.allocUnsafeSlow(64 * 1024);
  private readonly byFd = new Map<number, { pair: Pair; side: 'client' | 'backend' }>();
  private readonly registered = new Map<number, number>(); // fd -> events currently in epoll
  private readonly pairs = new Map<string, Pair>();
  private readonly watched = new Map<number, (events: number) => void>();
  private readonly pipes = new PipePool();
  private readonly extensions: Array<(msg: ToWorker) => boolean> = [];
  private readonly tickers = new Set<() => void>();
  private running = true;
  private readonly host: PairHost;
  /** With the fd store: deposits and removals, and each stored connection's record and pipes, by id. */
  private readonly stored: StoreHook | undefined;
  private readonly storedFds = new Map<string, StoredFds>();
  /** Clients closed after our fatal alert, given a moment to read it. */
  private readonly lingering: LingeringCloses = new LingeringCloses(this);

  constructor(
    private readonly control: Control,
    private idleTimeoutMs: number,
    /** With the fd store: the hook that keeps this loop's connections there (carry/stored-pairs.ts), given the loop's log. */
    storeHook?: (log: StoreHookLog) => StoreHook,
  ) {
    const log: StoreHookLog = (level, id, msg) => this.send({ op: 'log', level, id, msg });
    this.stored = storeHook?.(log);
    if (this.stored) this.onTick(() => (this.stored!.flush(), true));
    if (control.wakeFd >= 0) sys.epollCtl(this.ep, EPOLL_CTL_ADD, control.wakeFd, encodeEvent(this.ev, 0x001, control.wakeFd));
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
      closed: (pair, reason, level, cause) => {
        this.forget(pair);
        // Out of the store first: while it holds duplicates, closing ours would not close the connection.
        const s = this.storedFds.get(pair.info.id);
        if (s) {
          this.storedFds.delete(pair.info.id);
          this.stored!.remove(pair.info.id, s, [pair.client.fd, pair.backendFd]);
        }
        sys.close(pair.backendFd);
        // After an alert of ours: FIN, then the client's FIN (or a bound) before close, so no RST overtakes it.
        if (cause === 'protocol_error') this.lingering.add(pair.client.fd);
        else sys.close(pair.client.fd);
        const { id, client, listener } = pair.info;
        this.send({ op: 'closed', id, client, listener, reason, cause, level, bytesIn: pair.bytesIn, bytesOut: pair.bytesOut });
      },
      log,
      pipes: this.pipes,
      flagsChanged: this.stored
        ? (pair) => {
            const s = this.storedFds.get(pair.info.id);
            if (s) this.stored!.flags(pair.info.id, s, pair.flags);
          }
        : undefined,
    };
  }

  send(msg: FromWorker): void {
    this.control.send(msg);
  }

  get size(): number {
    return this.pairs.size;
  }

  /**
   * Starts relaying one connection: new, carried from elsewhere with its snapshot, or (`stored`)
   * found in the fd store after a restart. With the fd store, a new or carried one is deposited.
   */
  add(info: ConnectionInfo, clientFd: number, backendFd: number, records: ClientRecords, restored?: ConnectionSnapshot, stored?: StoredFds): void {
    assertAgreeingMode(info, records);
    let own: OwnPipes | undefined;
    if (this.stored && stored) {
      own = this.stored.adopted(stored);
      this.storedFds.set(info.id, stored);
    } else if (this.stored) {
      const d = this.stored.deposit(info, clientFd, backendFd, restored);
      if (d) {
        own = d.own;
        restored = d.restored;
        this.storedFds.set(info.id, d.fds);
      }
    } else if (stored) {
      throw new Error(`relay loop: connection ${info.id} comes from the fd store, but this loop has none`);
    }
    const client = records.mode === 'user' ? userClient(clientFd, records.state) : new KernelClient(clientFd, this.io, info.version);
    const pair = new Pair(info, client, backendFd, this.host, restored, own);
    this.pairs.set(info.id, pair);
    this.byFd.set(clientFd, { pair, side: 'client' });
    this.byFd.set(backendFd, { pair, side: 'backend' });
    pair.start();
  }

  /** Takes over a connection that another loop detached. */
  adopt(c: CarriedConnection): void {
    this.add(c.pair.info, c.clientFd, c.backendFd, carriedRecords(c), c.pair);
  }

  /**
   * Stops relaying up to `max` connections at a clean point and returns their whole state (keys
   * included for user mode). Their fds leave this loop's epoll but stay open: the caller owns them.
   */
  detach(max: number): CarriedConnection[] {
    const out: CarriedConnection[] = [];
    for (const p of this.pairs.values()) {
      if (out.length >= max) break;
      const user = p.client instanceof UserClient ? p.client.snapshot() : undefined;
      out.push({
        clientFd: p.client.fd,
        backendFd: p.backendFd,
        pair: p.snapshot(),
        user: user && {
          ...user,
          tx: { ...user.tx, key: ownedCopy(user.tx.key), iv: ownedCopy(user.tx.iv) },
          rx: { ...user.rx, key: ownedCopy(user.rx.key), iv: ownedCopy(user.rx.iv) },
          secrets: user.secrets && { client: ownedCopy(user.secrets.client), server: ownedCopy(user.secrets.server) },
        },
      });
      if (user) for (const b of [user.tx.key, user.tx.iv, user.rx.key, user.rx.iv, user.secrets?.client, user.secrets?.server]) b?.fill(0);
      p.release();
      this.forget(p);
      const s = this.storedFds.get(p.info.id);
      if (s) {
        this.storedFds.delete(p.info.id);
        this.stored!.release(p.info.id, s);
      }
    }
    // These connections leave for another process image: nothing here would retry what waits.
    this.stored?.flush(true);
    return out;
  }

  /** Removes a pair from epoll and the maps (an epoll entry outlives close() while another process holds the socket). */
  private forget(pair: Pair): void {
    for (const fd of [pair.client.fd, pair.backendFd]) {
      if (this.registered.has(fd)) {
        try {
          sys.epollCtl(this.ep, EPOLL_CTL_DEL, fd, encodeEvent(this.ev, 0, fd));
        } catch {
          /* already gone */
        }
        this.registered.delete(fd);
      }
      this.byFd.delete(fd);
    }
    this.pairs.delete(pair.info.id);
  }

  /** Adds another fd (e.g. the bridge link) to this loop's epoll, with its own handler. */
  watch(fd: number, onEvents: (events: number) => void, events = EPOLLIN): void {
    sys.epollCtl(this.ep, EPOLL_CTL_ADD, fd, encodeEvent(this.ev, events, fd));
    this.watched.set(fd, onEvents);
  }

  unwatch(fd: number): void {
    if (!this.watched.delete(fd)) return;
    try {
      sys.epollCtl(this.ep, EPOLL_CTL_DEL, fd, encodeEvent(this.ev, 0, fd));
    } catch {
      /* already closed */
    }
  }

  /** Handles control messages this loop does not know (returns true when it took one). */
  extend(handler: (msg: ToWorker) => boolean): void {
    this.extensions.push(handler);
  }

  /** Calls fn after every wake-up of the loop (at least once a second); fn removes itself by returning false. */
  onTick(fn: () => boolean): void {
    const t = () => {
      if (!fn()) this.tickers.delete(t);
    };
    this.tickers.add(t);
  }

  configure(idleTimeoutMs: number): void {
    this.idleTimeoutMs = idleTimeoutMs;
  }

  /** Closes every connection (close_notify) and ends run(). */
  stop(): void {
    for (const p of [...this.pairs.values()]) {
      p.client.closeNotify();
      p.abort('proxy shutting down', 'shutdown');
    }
    this.running = false;
  }

  /** Ends run() without touching the connections (there are none left, or someone else has them). */
  end(): void {
    this.running = false;
  }

  private handle(msg: ToWorker): void {
    switch (msg.op) {
      case 'add':
        this.add(msg.info, msg.clientFd, msg.backendFd, msg.records, msg.restored, msg.stored);
        break;
      case 'configure':
        this.configure(msg.idleTimeoutMs);
        break;
      case 'stats':
        this.send({
          op: 'stats',
          seq: msg.seq,
          connections: [...this.pairs.values()].map((p) => ({ id: p.info.id, bytesIn: p.bytesIn, bytesOut: p.bytesOut, lastActivity: p.lastActivity })),
          heapUsed: getHeapStatistics().used_heap_size,
        });
        break;
      case 'stop':
        this.stop();
        break;
      default:
        if (!this.extensions.some((h) => h(msg))) throw new Error(`relay loop: unknown message ${JSON.stringify(msg.op)}`);
    }
  }

  private drainMessages(): void {
    for (;;) {
      const m = this.control.receive();
      if (!m) return;
      this.handle(m);
    }
  }

  private checkIdle(now: number): void {
    if (this.idleTimeoutMs <= 0) return;
    for (const p of [...this.pairs.values()]) {
      if (now - p.lastActivity > this.idleTimeoutMs) p.abort(`idle for more than ${this.idleTimeoutMs} ms`, 'idle_timeout');
    }
  }

  /** Runs until stopped; returns after closing its epoll instance. */
  run(): void {
    let lastIdleCheck = Date.now();
    const { events, scratch, byFd, watched } = this;
    this.drainMessages();
    while (this.running) {
      const n = sys.epollWait(this.ep, events, MAX_EVENTS, 1000);
      for (let i = 0; i < n && this.running; i++) {
        const { events: e, fd } = decodeEvent(events, i);
        if (fd === this.control.wakeFd) {
          this.control.woken?.();
          continue;
        }
        const ent = byFd.get(fd);
        if (ent) {
          if (ent.side === 'client') ent.pair.onClient(e, scratch);
          else ent.pair.onBackend(e, scratch);
          continue;
        }
        watched.get(fd)?.(e);
      }
      this.drainMessages();
      for (const t of [...this.tickers]) t();
      const now = Date.now();
      if (this.lingering.size) this.lingering.tick(now);
      if (now - lastIdleCheck >= 1000) {
        lastIdleCheck = now;
        this.checkIdle(now);
      }
    }
    this.stored?.flush(true);
    this.lingering.closeAll();
    sys.close(this.ep);
    this.pipes.close();
    this.send({ op: 'stopped' });
  }
}
