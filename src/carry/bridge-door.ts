// The upgrade bridge's front door: while the image execs, accept on its listening sockets, handshake in a worker thread, relay here.
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import type { Logger } from '../core/log.js';
import { E, EAGAIN, EFD_CLOEXEC, EFD_NONBLOCK, EINTR, SOCK_CLOEXEC, SOCK_NONBLOCK, SOL_SOCKET, SO_LINGER, errnoName, sys } from '../kernel/libc.js';
import { HANDSHAKE_WORKER, type DeferredStart, type FromHandshaker, type ToHandshaker, type WorkerStart } from '../edge/handshakers.js';
import { wipeListeners } from '../edge/listener-setup.js';
import { SourceCounts, sourceOf, sourceOfClient } from '../edge/per-source.js';
import type { RelayLoop } from '../relay/loop.js';
import { WORKER_RESOURCE_LIMITS } from '../relay/shard.js';
import type { CarriedConnection } from '../relay/protocol.js';
import { counter, type CounterName } from '../core/counters.js';
import type { DoorOrder } from './door.js';

/** The bridge's handshake worker in log lines (`handshaker`): the image's are numbered from 0. */
export const BRIDGE_HANDSHAKER = -1;

/** struct linger { l_onoff = 1; l_linger = 0 }: close() resets the connection. */
const LINGER_ABORT = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
/** After accept fails for want of descriptors or memory: how long clients are left in the backlog. */
const BACKOFF_MS = 100;

/**
 * The bridge's handshake worker, booted before its settings exist: Node and our handshake modules load while the image
 * runs its pre-flight (in a one-CPU guest that boot takes tens of seconds), and the door order then only arms it.
 */
export function bootHandshaker(): Worker {
  const deferred: DeferredStart = { deferred: true };
  return new Worker(HANDSHAKE_WORKER, { workerData: deferred, resourceLimits: WORKER_RESOURCE_LIMITS });
}

export interface DoorEvents {
  /** The handshake worker is up and the listening sockets are watched. */
  serving(): void;
  /** A handshake ended (established or gone): a deferred `return` may be answered now. */
  settled(): void;
}

export class BridgeDoor {
  private readonly port: MessagePort;
  private readonly worker: Worker;
  private readonly wakeFd = sys.eventfd(EFD_NONBLOCK | EFD_CLOEXEC);
  private readonly drainBuf = Buffer.alloc(8);
  /** The next connection number to give out; undefined until the image hands accepting over. */
  private nextId: number | undefined;
  private counts: Record<string, number> = {};
  private readonly inFlight = new Set<string>();
  private readonly sources = new SourceCounts();
  private readonly watching = new Set<number>();
  private ready = false;
  private stopped = false;
  private backoffUntil = 0;
  private workerEnded = false;
  /** Past this (once stopped), handshakes still in progress are given up: a worker that died would never report them. */
  private giveUpAt = Infinity;

  /**
   * Arms `booted` (from bootHandshaker), or starts a handshake worker, with `order` (whose keys it wipes once the worker
   * has its copy); `listenerFds` become the door's.
   */
  constructor(
    private readonly loop: RelayLoop,
    private readonly order: DoorOrder,
    private readonly listenerFds: number[],
    private readonly on: DoorEvents,
    private readonly log: Logger,
    booted?: Worker,
  ) {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    if (!(order.tickets?.keys instanceof Uint8Array)) {
      wipeListeners(order.handshake.listeners);
      throw new Error('the order carries no session ticket keys');
    }
    // The image's ticket keys, in an ArrayBuffer of their own: transferred, the worker's alone (it wipes them at stop).
    const keys = new Uint8Array(new ArrayBuffer(order.tickets.keys.length));
    keys.set(order.tickets.keys);
    order.tickets.keys.fill(0);
    const tickets = { ...order.tickets, keys };
    const init: WorkerStart = {
      ...order.handshake,
      index: BRIDGE_HANDSHAKER,
      tickets,
      inlinePoll: false,
      reply: { port: port2, wakeFd: this.wakeFd },
    };
    try {
      // The settings are cloned here and now: the worker holds its own copy of the private keys from this line on.
      const transferList = [port2, keys.buffer as ArrayBuffer];
      if (booted) booted.postMessage(init, transferList);
      this.worker = booted ?? new Worker(HANDSHAKE_WORKER, { workerData: init, transferList, resourceLimits: WORKER_RESOURCE_LIMITS });
    } catch (e) {
      keys.fill(0);
      throw e;
    } finally {
      wipeListeners(order.handshake.listeners);
    }
    for (const fd of listenerFds) sys.setNonBlocking(fd);
    loop.watch(this.wakeFd, () => this.drain());
    loop.onTick(() => {
      if (this.inFlight.size > 0 && Date.now() > this.giveUpAt) this.giveUp();
      this.sync();
      return !this.done;
    });
  }

  /** Handshakes in progress. */
  get handshaking(): number {
    return this.inFlight.size;
  }

  /** Stopped, and no handshake left to finish. */
  get done(): boolean {
    return this.stopped && this.inFlight.size === 0;
  }

  /** The image has stopped accepting: accept from now on. */
  accept(firstId: number): void {
    this.nextId ??= firstId;
    this.sync();
  }

  /** Connections moved into the bridge count against their source here as they did in the image. */
  adopted(pairs: CarriedConnection[]): void {
    for (const p of pairs) {
      const source = sourceOfClient(p.pair.info.client);
      if (source !== undefined) this.sources.adopted(p.pair.info.id, source);
    }
  }

  /** A relayed connection ended (its source has one fewer). */
  closed(id: string): void {
    this.sources.closed(id);
  }

  /** Counter increments since the last call. */
  takeCounts(): Record<string, number> {
    const c = this.counts;
    this.counts = {};
    return c;
  }

  /** Accepts no more (the sockets are closed here; the image keeps its own); handshakes in progress go on. */
  stop(): { nextId: number; counts: Record<string, number> } {
    if (!this.stopped) {
      this.stopped = true;
      const { handshakeTimeoutMs, backendConnectTimeoutMs } = this.order.handshake;
      this.giveUpAt = Date.now() + handshakeTimeoutMs + backendConnectTimeoutMs + 2000;
      this.sync();
      for (const fd of this.listenerFds) sys.close(fd);
    }
    if (this.inFlight.size === 0) this.endWorker();
    return { nextId: this.nextId ?? 0, counts: this.takeCounts() };
  }

  /** Handshakes that outlived every timeout of theirs: the worker is told to abort them, and they are counted gone. */
  private giveUp(): void {
    this.log.error({ handshakes: this.inFlight.size }, 'upgrade bridge: handshakes outlived their timeouts; given up');
    this.port.postMessage({ op: 'abort', reason: 'upgrade bridge giving up' } satisfies ToHandshaker);
    for (const id of this.inFlight) this.sources.closed(id);
    this.count('handshakes_aborted_by_upgrade', this.inFlight.size);
    this.inFlight.clear();
    this.endWorker();
    this.on.settled();
  }

  private count(name: CounterName, by = 1): void {
    this.counts[name] = (this.counts[name] ?? 0) + by;
  }

  private endWorker(): void {
    if (this.workerEnded) return;
    this.workerEnded = true;
    this.port.postMessage({ op: 'stop' } satisfies ToHandshaker);
    this.loop.unwatch(this.wakeFd);
  }

  /** Watches the listening sockets exactly when new clients may be taken: serving, not stopped, under max_connections. */
  private sync(): void {
    const open =
      this.ready &&
      this.nextId !== undefined &&
      !this.stopped &&
      Date.now() >= this.backoffUntil &&
      this.loop.size + this.inFlight.size < this.order.limits.maxConnections;
    this.listenerFds.forEach((fd, i) => {
      if (open && !this.watching.has(fd)) {
        this.loop.watch(fd, () => this.acceptOn(fd, i));
        this.watching.add(fd);
      } else if (!open && this.watching.has(fd)) {
        this.loop.unwatch(fd);
        this.watching.delete(fd);
      }
    });
  }

  private acceptOn(lfd: number, listener: number): void {
    const { limits } = this.order;
    for (let i = 0; i < 64; i++) {
      if (this.stopped || this.loop.size + this.inFlight.size >= limits.maxConnections) return this.sync();
      const fd = sys.accept4(lfd, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        const e = -fd;
        if (e === EAGAIN || e === EINTR || e === E.ECONNABORTED) return;
        this.log.error(`upgrade bridge: accept: ${errnoName(e)}; pausing accepts for ${BACKOFF_MS} ms`);
        this.backoffUntil = Date.now() + BACKOFF_MS;
        return this.sync();
      }
      this.count('connections_accepted');
      const peer = sys.getpeername(fd);
      const source = peer ? sourceOf(peer) : undefined;
      const over =
        source === undefined
          ? undefined
          : this.sources.over(source, { connections: limits.maxConnectionsPerSource, handshakes: limits.maxHandshakesPerSource });
      if (over) {
        sys.setsockopt(fd, SOL_SOCKET, SO_LINGER, LINGER_ABORT);
        sys.close(fd);
        this.count(counter.rejectedPerSource(over));
        continue;
      }
      const id = `c${this.nextId!++}`;
      this.inFlight.add(id);
      if (source !== undefined) this.sources.opened(id, source);
      this.port.postMessage({ op: 'conn', fd, id, listener } satisfies ToHandshaker);
    }
  }

  /** Messages from the handshake worker (it wrote the eventfd after posting). */
  private drain(): void {
    sys.read(this.wakeFd, this.drainBuf, 8);
    for (;;) {
      const m = receiveMessageOnPort(this.port)?.message as FromHandshaker | undefined;
      if (!m) break;
      if (m.op === 'ready') {
        this.ready = true;
        this.sync();
        if (!this.stopped) this.on.serving();
        continue;
      }
      for (const name of m.counts) this.count(name);
      const id = m.op === 'gone' ? m.id : m.info.id;
      this.inFlight.delete(id);
      if (m.op === 'gone') {
        this.sources.closed(id);
      } else {
        this.sources.established(id);
        this.count(counter.connections(m.info.mode));
        try {
          this.loop.add(m.info, m.clientFd, m.backendFd, m.records);
        } catch (e) {
          this.log.error({ conn: id }, `upgrade bridge: cannot relay a new connection: ${(e as Error).message}; closed it`);
          this.sources.closed(id);
          sys.close(m.clientFd);
          sys.close(m.backendFd);
        }
      }
      if (this.done) this.endWorker();
      this.sync();
      this.on.settled();
    }
  }
}
