// Main-thread side of the handshake workers: accepted fds go to the least busy one; established connections come back.
import { Worker, type MessagePort } from 'node:worker_threads';
import type { LogLevel } from '../core/log.js';
import { spareOnEventLoop } from '../kernel/spare-memory.js';
import { WORKER_RESOURCE_LIMITS } from '../relay/shard.js';
import { wipeListeners, type HandshakeListener, type TlsBase } from './listener-setup.js';
import type { KtlsPolicy } from '../core/types.js';
import type { ClientRecords, ConnectionInfo } from '../core/connection.js';
import type { CounterName } from '../core/counters.js';
import type { TicketKeySet } from '../handshake/ticket-keys.js';

/** Where workers get the session ticket keys: a fresh copy per call (runtime's SessionTickets). */
export interface TicketKeySource {
  current(): TicketKeySet;
}

/** What one worker starts with: the shared settings, its index, and its own copy of the ticket keys (transferred). */
export interface WorkerStart extends HandshakerInit {
  /** Which handshake worker this is (0-based): in its log lines. */
  index: number;
  tickets: TicketKeySet;
}

/**
 * A worker started before its settings exist (the upgrade bridge boots it while the image runs its pre-flight): its
 * WorkerStart comes as the first message on its parent port, keys transferred with it.
 */
export interface DeferredStart {
  deferred: true;
}

export interface HandshakerInit {
  /** Indexed as the server's listeners: a connection names the one that accepted it. */
  listeners: HandshakeListener[];
  tlsBase: TlsBase;
  policy: KtlsPolicy;
  kernelSuites: string[];
  handshakeTimeoutMs: number;
  backendConnectTimeoutMs: number;
  backendRetryMs: number;
  logLevel: LogLevel;
  /** The IRONSOCKET_KEYLOG_FILE debug switch: each worker appends every session's key log lines here. */
  keylogFile?: string;
  /** Wait on epoll inline rather than on a libuv pool thread (set by the pool: more workers than pool threads to spare). */
  inlinePoll?: boolean;
  /**
   * Talk over this port instead of the parent port, and write to `wakeFd` (an eventfd) after each message: for a
   * worker whose parent thread never runs its event loop (the upgrade bridge's, which waits in epoll_wait).
   */
  reply?: { port: MessagePort; wakeFd: number };
}

/** The handshake worker's entry module. */
export const HANDSHAKE_WORKER = new URL('./handshake-worker.js', import.meta.url);

export type ReloadTimeouts = Pick<HandshakerInit, 'handshakeTimeoutMs' | 'backendConnectTimeoutMs' | 'backendRetryMs'>;

export type ToHandshaker =
  | { op: 'conn'; fd: number; id: string; listener: number }
  | { op: 'reload'; listeners: HandshakeListener[]; timeouts: ReloadTimeouts }
  /** A new set of session ticket keys (its buffer is transferred: the worker's own from now on). */
  | { op: 'tickets'; set: TicketKeySet }
  | { op: 'abort'; reason: string }
  | { op: 'stop' };

/**
 * `counts`: counter increments since the worker's last message. Every connection ends in `established` or
 * `gone`, so counts ride on those rather than costing a message each (a postMessage is tens of microseconds).
 */
export type FromHandshaker =
  | { op: 'ready' }
  | { op: 'established'; info: ConnectionInfo; clientFd: number; backendFd: number; records: ClientRecords; counts: CounterName[] }
  | { op: 'gone'; id: string; counts: CounterName[] };

export interface HandshakerEvents {
  established(m: Extract<FromHandshaker, { op: 'established' }>): void;
  gone(id: string): void;
  count(name: CounterName): void;
  error(e: Error): void;
}

export class Handshakers {
  private readonly workers: Worker[] = [];
  /** Handshakes in progress per worker. */
  private readonly busy: number[] = [];
  private readonly where = new Map<string, number>();
  private stopping = false;
  /** This thread's share of a burst (accepts, hand-offs) goes back once quiet, as the workers' does. */
  private readonly spare = spareOnEventLoop();
  /** Resolves once every worker has loaded. */
  readonly started: Promise<void>;

  /**
   * Starts `n` workers. With `after`, one after another once it resolves, so that their boots do not
   * pile up on the CPUs (after an upgrade's exec); without, all at once.
   */
  constructor(
    n: number,
    init: HandshakerInit,
    on: HandshakerEvents,
    private readonly tickets: TicketKeySource,
    after?: Promise<void>,
  ) {
    // Our own copy of the keys until every worker has its own: the caller wipes theirs.
    // Each worker's poller blocks one libuv pool thread while it waits (main's listener holds another);
    // past what the pool can spare, workers poll inline instead.
    const pool = Number(process.env.UV_THREADPOOL_SIZE) || 4;
    const own: HandshakerInit = { ...init, inlinePoll: n + 1 > pool - 1, listeners: copyListeners(init.listeners) };
    this.started = (async () => {
      try {
        if (after) {
          await after;
          for (let i = 0; i < n && !this.stopping; i++) await this.startWorker(own, on);
        } else {
          await Promise.all(Array.from({ length: n }, () => this.startWorker(own, on)));
        }
      } finally {
        wipeListeners(own.listeners);
      }
    })();
  }

  /**
   * Gives every worker new listener settings (certificates, backends, ...); connections dispatched
   * after this use them, handshakes in progress finish with the old ones. The caller wipes `listeners`.
   */
  async reload(listeners: HandshakeListener[], timeouts: ReloadTimeouts): Promise<void> {
    await this.started;
    for (const w of this.workers) w.postMessage({ op: 'reload', listeners, timeouts } satisfies ToHandshaker);
  }

  /**
   * Gives every worker the current session ticket keys (after a rotation or a reload), each its own copy, transferred.
   * A worker not started yet takes the current set when it starts.
   */
  broadcastTickets(): void {
    for (const w of this.workers) {
      const set = this.tickets.current();
      w.postMessage({ op: 'tickets', set } satisfies ToHandshaker, [set.keys.buffer as ArrayBuffer]);
    }
  }

  private startWorker(init: HandshakerInit, on: HandshakerEvents): Promise<void> {
    const i = this.workers.length;
    const tickets = this.tickets.current();
    const workerData: WorkerStart = { ...init, index: i, tickets };
    const w = new Worker(HANDSHAKE_WORKER, {
      workerData,
      transferList: [tickets.keys.buffer as ArrayBuffer],
      resourceLimits: WORKER_RESOURCE_LIMITS,
    });
    this.workers.push(w);
    this.busy.push(0);
    w.unref();
    w.on('error', (e) => on.error(e));
    const ready = new Promise<void>((resolve) => {
      w.once('exit', () => resolve());
      w.on('message', (m: FromHandshaker) => {
        if (m.op === 'ready') return resolve();
        for (const name of m.counts) on.count(name);
        const id = m.op === 'gone' ? m.id : m.info.id;
        if (this.where.delete(id)) this.busy[i]!--;
        this.spare.note();
        if (m.op === 'gone') on.gone(m.id);
        else on.established(m);
      });
    });
    return ready;
  }

  /** Hands an accepted client fd to the least busy worker, which owns it from now on. */
  dispatch(fd: number, id: string, listener: number): void {
    // The server accepts only once `started` resolved, so there is always a worker here.
    let best = 0;
    for (let i = 1; i < this.busy.length; i++) if (this.busy[i]! < this.busy[best]!) best = i;
    this.busy[best]!++;
    this.where.set(id, best);
    this.workers[best]!.postMessage({ op: 'conn', fd, id, listener } satisfies ToHandshaker);
  }

  /** Fails every handshake in progress (each connection is then reported `gone`). */
  abortAll(reason: string): void {
    for (const w of this.workers) w.postMessage({ op: 'abort', reason } satisfies ToHandshaker);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    this.spare.stop();
    await this.started;
    await Promise.all(
      this.workers.map(
        (w) =>
          new Promise<void>((resolve) => {
            w.once('exit', () => resolve());
            w.postMessage({ op: 'stop' } satisfies ToHandshaker);
            setTimeout(() => void w.terminate(), 2000).unref();
          }),
      ),
    );
  }
}

/** A copy whose key buffers are our own (the caller wipes the originals). */
function copyListeners(ls: HandshakeListener[]): HandshakeListener[] {
  // Buffer.alloc, not Buffer.from: a copy must not land in the shared allocation pool (cloning a view clones its whole pool slab).
  const own = (k: Buffer) => {
    const c = Buffer.alloc(k.length);
    k.copy(c);
    return c;
  };
  return ls.map((l) => ({ ...l, groups: l.groups.map((g) => ({ ...g, keys: g.keys.map(own) })) }));
}
