// Main-thread handle on the relay worker: hands it established connections, asks for counters, hears about closes.
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { EFD_CLOEXEC, EFD_NONBLOCK, sys } from '../kernel/libc.js';
import type { PairInfo, PairSnapshot } from './pair.js';
import type { CarriedPair, FromWorker, PairStats, RestoredSummary, ToWorker, UserState, WorkerInit } from './protocol.js';

export interface RelayEvents {
  restored: [summary: RestoredSummary];
  closed: [msg: Extract<FromWorker, { op: 'closed' }>];
  log: [msg: Extract<FromWorker, { op: 'log' }>];
  error: [err: Error];
}

export class Relay extends EventEmitter<RelayEvents> {
  private readonly worker: Worker;
  private readonly wakeFd = sys.eventfd(EFD_NONBLOCK | EFD_CLOEXEC);
  private readonly one = Buffer.alloc(8);
  private seq = 0;
  private readonly waiting = new Map<number, (s: PairStats[]) => void>();
  private readonly frozenWaiters = new Map<number, (p: CarriedPair[]) => void>();
  private stopped: Promise<void> | undefined;
  private live = 0;
  private early: Array<Extract<FromWorker, { op: 'closed' }>> = [];

  constructor(opts: { idleTimeoutMs: number; handoffFd?: number; workerUrl?: URL }) {
    super();
    this.one.writeBigUInt64LE(1n);
    const init: WorkerInit = { wakeFd: this.wakeFd, idleTimeoutMs: opts.idleTimeoutMs, handoffFd: opts.handoffFd };
    this.worker = new Worker(opts.workerUrl ?? new URL('./worker.js', import.meta.url), { workerData: init });
    this.worker.on('message', (m: FromWorker) => this.onMessage(m));
    this.worker.on('error', (e) => this.emit('error', e));
    // Kept referenced: after exec the main thread may wait on nothing else but the restoring worker.
    (this as EventEmitter).on('newListener', (event: string) => {
      if (event !== 'closed' || this.early.length === 0) return;
      const queued = this.early.splice(0);
      setImmediate(() => queued.forEach((m) => this.emit('closed', m)));
    });
  }

  get connections(): number {
    return this.live;
  }

  private post(msg: ToWorker): void {
    this.worker.postMessage(msg);
    sys.write(this.wakeFd, this.one, 8);
  }

  private onMessage(m: FromWorker): void {
    switch (m.op) {
      case 'restored':
        this.live += m.restored.connections.length;
        this.emit('restored', m.restored);
        break;
      case 'closed':
        this.live--;
        // After exec the worker can report closes before anyone listens: keep them until someone does.
        if (this.listenerCount('closed') === 0) this.early.push(m);
        else this.emit('closed', m);
        break;
      case 'log':
        this.emit('log', m);
        break;
      case 'stats': {
        const cb = this.waiting.get(m.seq);
        this.waiting.delete(m.seq);
        cb?.(m.connections);
        break;
      }
      case 'frozen': {
        const cb = this.frozenWaiters.get(m.seq);
        this.frozenWaiters.delete(m.seq);
        cb?.(m.pairs);
        break;
      }
      case 'stopped':
        break;
    }
  }

  /** Gives the worker both fds; from here on it owns (and closes) them. */
  add(info: PairInfo, clientFd: number, backendFd: number, user?: UserState, restored?: PairSnapshot): void {
    this.live++;
    this.post({ op: 'add', info, clientFd, backendFd, user, restored });
  }

  /** Stops relaying at a clean point and returns every connection's state (keys included for user mode). */
  freeze(timeoutMs = 5000): Promise<CarriedPair[]> {
    return this.request(this.frozenWaiters, (seq) => ({ op: 'freeze', seq }), timeoutMs, 'relay worker did not freeze');
  }

  /** Posts a request carrying a sequence number and resolves with the worker's matching answer. */
  private request<T>(waiters: Map<number, (v: T) => void>, msg: (seq: number) => ToWorker, timeoutMs: number, what: string): Promise<T> {
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        waiters.delete(seq);
        reject(new Error(what));
      }, timeoutMs);
      waiters.set(seq, (v) => {
        clearTimeout(t);
        resolve(v);
      });
      this.post(msg(seq));
    });
  }

  thaw(): void {
    this.post({ op: 'thaw' });
  }

  configure(opts: { idleTimeoutMs: number }): void {
    this.post({ op: 'configure', idleTimeoutMs: opts.idleTimeoutMs });
  }

  stats(timeoutMs = 2000): Promise<PairStats[]> {
    return this.request(this.waiting, (seq) => ({ op: 'stats', seq }), timeoutMs, 'relay worker did not answer');
  }

  /** Closes every connection (close_notify) and stops the worker. */
  stop(): Promise<void> {
    this.stopped ??= new Promise<void>((resolve) => {
      const done = () => {
        sys.close(this.wakeFd);
        resolve();
      };
      this.worker.once('exit', done);
      this.worker.on('message', (m: FromWorker) => {
        if (m.op === 'stopped') void this.worker.terminate();
      });
      this.post({ op: 'stop' });
    });
    return this.stopped;
  }
}
