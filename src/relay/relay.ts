// The data plane as the rest of the proxy sees it: several relay workers (shards), new connections to the least loaded one.
import { EventEmitter } from 'node:events';
import type { StoredFds } from './store-hook.js';
import { addCounts, type PairStats, type Reclaimed } from './protocol.js';
import { Shard, type RelayEvents } from './shard.js';
import type { ClientRecords, ConnectionInfo, ConnectionSnapshot } from '../core/connection.js';

export interface Migrated {
  moved: number;
  intoBridgeMs: number;
  error?: string;
}

export class Relay extends EventEmitter<RelayEvents> {
  private readonly shards: Shard[] = [];
  /** Resolves once every worker has loaded. */
  readonly started: Promise<void>;

  /**
   * `shards` relay workers, each an epoll loop on its own thread; `workerUrl` is their entry module.
   * With `stagger` they start one after another: after an upgrade's exec the bridge is relaying every
   * connection, and isolates booting all at once would starve it of a small machine's CPUs.
   */
  /** `fdStore`: the NOTIFY_SOCKET whose fd store the workers deposit connections in. */
  constructor(private readonly opts: { idleTimeoutMs: number; workerUrl: URL; shards: number; stagger?: boolean; fdStore?: string }) {
    super();
    if (!(opts.shards >= 1)) throw new Error(`relay: need at least one shard, not ${opts.shards}`);
    this.started = opts.stagger
      ? (async () => {
          for (let i = 0; i < opts.shards; i++) await this.startShard().ready;
        })()
      : Promise.all(Array.from({ length: opts.shards }, () => this.startShard().ready)).then(() => undefined);
  }

  private startShard(): Shard {
    const s = new Shard(this.opts);
    s.on('closed', (m) => this.emit('closed', m));
    s.on('log', (m) => this.emit('log', m));
    s.on('error', (e) => this.emit('error', e));
    s.on('progress', () => this.emit('progress'));
    this.shards.push(s);
    return s;
  }

  get connections(): number {
    return this.shards.reduce((n, s) => n + s.connections, 0);
  }

  get shardCount(): number {
    return this.opts.shards;
  }

  /** Hands a connection to the shard relaying the fewest; from here on it owns (and closes) both fds. */
  add(info: ConnectionInfo, clientFd: number, backendFd: number, records: ClientRecords, restored?: ConnectionSnapshot, stored?: StoredFds): void {
    let best = this.shards[0]!;
    for (const s of this.shards) if (s.connections < best.connections) best = s;
    best.add(info, clientFd, backendFd, records, restored, stored);
  }

  async stats(timeoutMs = 2000): Promise<PairStats[]> {
    await this.started;
    const per = await Promise.all(this.shards.map((s) => s.stats(timeoutMs)));
    return per.flatMap((list, worker) => list.map((p) => ({ ...p, worker })));
  }

  /** Bytes of JavaScript heap in use per worker, as of the last `stats()`. */
  heapUsed(): number[] {
    return this.shards.map((s) => s.heapUsed);
  }

  configure(opts: { idleTimeoutMs: number }): void {
    this.opts.idleTimeoutMs = opts.idleTimeoutMs;
    for (const s of this.shards) s.configure(opts);
  }

  /**
   * Moves every shard's connections to the upgrade bridge, one shard after another (the others keep relaying).
   * `bridgeReady`: its `ready` was read already (else the first shard waits for it).
   */
  async migrate(linkFd: number, idleTimeoutMs: number, bridgeReady = false): Promise<Migrated> {
    await this.started;
    const total: Migrated = { moved: 0, intoBridgeMs: 0 };
    for (const [i, s] of this.shards.entries()) {
      const m = await s.migrate(linkFd, idleTimeoutMs, bridgeReady || i > 0);
      total.moved += m.moved;
      total.intoBridgeMs = Math.max(total.intoBridgeMs, m.intoBridgeMs);
      if (m.error) return { ...total, error: m.error };
    }
    return total;
  }

  /** Takes the connections back from the bridge, `expected` of them spread evenly over the shards. */
  async reclaim(linkFd: number, expected: number): Promise<Reclaimed> {
    await this.started;
    const all: Reclaimed = { connections: [], failed: [], closed: [], intoBridgeMs: 0, outOfBridgeMs: 0, bridgeDone: false };
    const share = Math.ceil(expected / this.shards.length);
    // A connection back in one shard can end while the next shard is still taking its share back: it is not live.
    const ended = new Set<string>();
    const noteEnd = (m: { id: string }) => ended.add(m.id);
    this.on('closed', noteEnd);
    try {
      for (let i = 0; i < this.shards.length && !all.bridgeDone && !all.error; i++) {
        const r = await this.shards[i]!.reclaim(linkFd, i === this.shards.length - 1 ? Number.MAX_SAFE_INTEGER : share);
        all.connections.push(...r.connections);
        all.failed.push(...r.failed);
        all.closed.push(...r.closed);
        if (r.counts) addCounts((all.counts ??= {}), r.counts);
        all.intoBridgeMs = Math.max(all.intoBridgeMs, r.intoBridgeMs);
        all.outOfBridgeMs = Math.max(all.outOfBridgeMs, r.outOfBridgeMs);
        all.bridgeDone = r.bridgeDone;
        if (r.error) all.error = r.error;
      }
    } finally {
      this.off('closed', noteEnd);
    }
    all.connections = all.connections.filter((c) => !ended.has(c.id));
    return all;
  }

  /** Closes every connection (close_notify) and stops the workers. */
  async stop(): Promise<void> {
    await this.started;
    await Promise.all(this.shards.map((s) => s.stop()));
  }
}
