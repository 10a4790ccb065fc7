// Main-thread handle on one relay worker (a shard): hands it established connections, asks for counters, hears about closes.
import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { EFD_CLOEXEC, EFD_NONBLOCK, sys } from '../kernel/libc.js';
import type { StoredFds } from './store-hook.js';
import { keyBuffers, type ClosedElsewhere, type FromWorker, type PairStats, type Reclaimed, type ToWorker, type WorkerInit } from './protocol.js';
import type { ClientRecords, ConnectionInfo, ConnectionSnapshot } from '../core/connection.js';

export interface RelayEvents {
  closed: [msg: Extract<FromWorker, { op: 'closed' }>];
  log: [msg: Extract<FromWorker, { op: 'log' }>];
  error: [err: Error];
  /** A batch moved to or from the upgrade bridge. */
  progress: [];
}

/**
 * V8 grows a thread's young generation up to 48 MiB under allocation bursts (handshakes, records) and keeps
 * it: with four worker threads that was most of the RSS per idle connection (36–58 KiB at 2 000 connections,
 * growing with each wave; 20 KiB and flat with this limit). Objects that survive are promoted as usual.
 */
export const WORKER_RESOURCE_LIMITS = { maxYoungGenerationSizeMb: 4 };

export class Shard extends EventEmitter<RelayEvents> {
  private readonly worker: Worker;
  private readonly wakeFd = sys.eventfd(EFD_NONBLOCK | EFD_CLOEXEC);
  private readonly one = Buffer.alloc(8);
  private seq = 0;
  private readonly waiting = new Map<number, (s: PairStats[]) => void>();
  private readonly migrateWaiters = new Map<number, (m: Extract<FromWorker, { op: 'migrated' }>) => void>();
  private readonly reclaimWaiters = new Map<number, (r: Reclaimed) => void>();
  private reclaiming = 0;
  private readonly closedWhileReclaiming = new Set<string>();
  private stopped: Promise<void> | undefined;
  private live = 0;
  /** JavaScript heap in use on the worker's thread, as of its last stats answer. */
  heapUsed = 0;

  /** `workerUrl` is the worker entry: a RelayLoop plus whatever the caller layers on it (upgrades). */
  constructor(opts: { idleTimeoutMs: number; workerUrl: URL; fdStore?: string }) {
    super();
    this.one.writeBigUInt64LE(1n);
    const init: WorkerInit = { wakeFd: this.wakeFd, idleTimeoutMs: opts.idleTimeoutMs, fdStore: opts.fdStore };
    this.worker = new Worker(opts.workerUrl, { workerData: init, resourceLimits: WORKER_RESOURCE_LIMITS });
    this.worker.on('message', (m: FromWorker) => this.onMessage(m));
    this.worker.on('error', (e) => this.emit('error', e));
    this.ready = new Promise((resolve) => {
      this.markReady = resolve;
      this.worker.once('exit', () => resolve());
    });
  }

  /** Resolves once the worker has loaded (or is gone). */
  readonly ready: Promise<void>;
  private markReady: () => void = () => {};

  get connections(): number {
    return this.live;
  }

  private post(msg: ToWorker, transfer: ArrayBuffer[] = []): void {
    this.worker.postMessage(msg, transfer);
    sys.write(this.wakeFd, this.one, 8);
  }

  private onMessage(m: FromWorker): void {
    switch (m.op) {
      case 'closed':
        this.live--;
        if (this.reclaiming > 0) this.closedWhileReclaiming.add(m.id);
        this.emit('closed', m);
        break;
      case 'log':
        this.emit('log', m);
        break;
      case 'stats': {
        const cb = this.waiting.get(m.seq);
        this.waiting.delete(m.seq);
        this.heapUsed = m.heapUsed;
        cb?.(m.connections);
        break;
      }
      case 'migrated': {
        this.live -= m.moved;
        const cb = this.migrateWaiters.get(m.seq);
        this.migrateWaiters.delete(m.seq);
        cb?.(m);
        break;
      }
      case 'reclaimed': {
        const cb = this.reclaimWaiters.get(m.seq);
        this.reclaimWaiters.delete(m.seq);
        // Connections that ended (or could not come back) while elsewhere are gone from here too.
        this.live += m.reclaimed.connections.length;
        if (--this.reclaiming === 0) {
          // A connection can end between its adoption and this answer: do not report it as live.
          const gone = this.closedWhileReclaiming;
          m.reclaimed.connections = m.reclaimed.connections.filter((c) => !gone.has(c.id));
          gone.clear();
        }
        const failed: ClosedElsewhere[] = m.reclaimed.failed.map((f) => ({ ...f, level: 'warn', cause: 'restore_failed' }));
        for (const c of [...m.reclaimed.closed, ...failed]) {
          const { id, client, listener, cause, level } = c;
          const reason = `${c.reason} (during an upgrade)`;
          this.emit('closed', { op: 'closed', id, client, listener, reason, cause, level, bytesIn: 0, bytesOut: 0, elsewhere: true });
        }
        cb?.(m.reclaimed);
        break;
      }
      case 'ready':
        this.markReady();
        break;
      case 'transfer-progress':
        this.emit('progress');
        break;
      case 'stopped':
        break;
    }
  }

  /** Gives the worker both fds (and a stored connection's record and pipes); from here on it owns (and closes) them. */
  add(info: ConnectionInfo, clientFd: number, backendFd: number, records: ClientRecords, restored?: ConnectionSnapshot, stored?: StoredFds): void {
    this.live++;
    // Keys move to the worker rather than being copied (this thread keeps no trace of them).
    this.post({ op: 'add', info, clientFd, backendFd, records, restored, stored }, keyBuffers(records));
  }

  /**
   * Moves every connection to the upgrade bridge at the other end of `linkFd`, batch by batch; resolves
   * when all are there or, with `error` set, when the bridge failed (the rest stayed here).
   * `bridgeReady`: another shard already read the bridge's hello.
   */
  migrate(linkFd: number, idleTimeoutMs: number, bridgeReady: boolean): Promise<Extract<FromWorker, { op: 'migrated' }>> {
    return this.request(this.migrateWaiters, (seq) => ({ op: 'migrate', seq, linkFd, idleTimeoutMs, bridgeReady }), 0, '');
  }

  /** Takes up to `max` connections back from the upgrade bridge. */
  reclaim(linkFd: number, max: number): Promise<Reclaimed> {
    this.reclaiming++;
    return this.request(this.reclaimWaiters, (seq) => ({ op: 'reclaim', seq, linkFd, max }), 0, '');
  }

  /** Posts a request carrying a sequence number and resolves with the worker's matching answer. */
  private request<T>(waiters: Map<number, (v: T) => void>, msg: (seq: number) => ToWorker, timeoutMs: number, what: string): Promise<T> {
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      // 0: no timeout (the worker always answers; the caller bounds the other process instead).
      const t =
        timeoutMs > 0
          ? setTimeout(() => {
              waiters.delete(seq);
              reject(new Error(what));
            }, timeoutMs)
          : undefined;
      waiters.set(seq, (v) => {
        clearTimeout(t);
        resolve(v);
      });
      this.post(msg(seq));
    });
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
