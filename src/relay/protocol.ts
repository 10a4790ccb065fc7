// Messages between the main thread and the relay worker (structured-clone safe: no keys ever cross here for kernel mode).
import type { StoredFds } from './store-hook.js';
import type { ClientRecords, CloseCause, ConnectionInfo, ConnectionSnapshot, UserState } from '../core/connection.js';

export interface WorkerInit {
  /** eventfd the main thread writes to after posting, to wake epoll_wait. */
  wakeFd: number;
  idleTimeoutMs: number;
  /** NOTIFY_SOCKET of the fd store to deposit connections in (fd_store on), else none. */
  fdStore?: string;
}

/**
 * A copy of key bytes in an ArrayBuffer of its own, outside V8's heap. `new Uint8Array(bytes)` of 64 bytes or fewer
 * lives inside the heap: taking its `.buffer` (a transfer does) moves the bytes out and leaves the old ones behind,
 * unzeroed, until a garbage collection; `fill(0)` can never reach them. An ArrayBuffer is always allocated outside.
 */
export function ownedCopy(bytes: Uint8Array): Uint8Array {
  const copy = new Uint8Array(new ArrayBuffer(bytes.length));
  copy.set(bytes);
  return copy;
}

/** The buffers holding a user-mode connection's keys, to transfer (move, not copy) with postMessage. */
export function keyBuffers(records: ClientRecords): ArrayBuffer[] {
  if (records.mode !== 'user') return [];
  const user = records.state;
  const keys = [user.tx.key, user.tx.iv, user.rx.key, user.rx.iv, user.secrets?.client, user.secrets?.server];
  // Only arrays that own their whole buffer: transferring a shared one would take others' bytes along.
  const own = keys.filter((k): k is Uint8Array => k !== undefined && k.byteOffset === 0 && k.byteLength === k.buffer.byteLength);
  return [...new Set(own.map((k) => k.buffer as ArrayBuffer))];
}

/** One connection as an upgrade carries it: fds, relay state, and (user mode) record state. */
export interface CarriedConnection {
  clientFd: number;
  backendFd: number;
  pair: ConnectionSnapshot;
  user?: UserState;
}

/** A carried connection's client side: user mode when it carries record state (the carried form keeps it beside the pair). */
export function carriedRecords(c: CarriedConnection): ClientRecords {
  return c.user ? { mode: 'user', state: c.user } : { mode: 'kernel' };
}

export type ToWorker =
  | { op: 'add'; info: ConnectionInfo; clientFd: number; backendFd: number; records: ClientRecords; restored?: ConnectionSnapshot; stored?: StoredFds }
  /** Move every connection to the upgrade bridge on the other end of linkFd, batch by batch. */
  | { op: 'migrate'; seq: number; linkFd: number; idleTimeoutMs: number; bridgeReady: boolean }
  /** Take up to `max` connections back from the upgrade bridge. */
  | { op: 'reclaim'; seq: number; linkFd: number; max: number }
  | { op: 'configure'; idleTimeoutMs: number }
  | { op: 'stats'; seq: number }
  | { op: 'stop' };

export interface PairStats {
  id: string;
  bytesIn: number;
  bytesOut: number;
  lastActivity: number;
  /** Which relay worker reported it (set by the main-thread pool). */
  worker?: number;
}

/** How a connection ended: the fields of a relay worker's `closed` message, and all the upgrade bridge reports of one that ended there. */
export interface ClosedElsewhere {
  id: string;
  /** Its client address and listener, from its ConnectionInfo (for the `closed` log line). */
  client?: string;
  listener?: string;
  reason: string;
  cause: CloseCause;
  level: 'info' | 'warn';
}

/** What taking connections back from the bridge produced. */
export interface Reclaimed {
  /** Set when the bridge could not hand everything back (what did come back is listed). */
  error?: string;
  /** The bridge has nothing left (it exits now). */
  bridgeDone: boolean;
  connections: ConnectionInfo[];
  failed: { id: string; reason: string }[];
  closed: ClosedElsewhere[];
  /** The largest pause one connection saw moving into the bridge, and out of it (ms). */
  intoBridgeMs: number;
  outOfBridgeMs: number;
  /** Counter increments of the connections the bridge accepted itself (while the image exec'd), by counter name. */
  counts?: Record<string, number>;
}

/** Adds counter increments `from` into `into`. */
export function addCounts(into: Record<string, number>, from: Record<string, number> | undefined): void {
  for (const [k, n] of Object.entries(from ?? {})) into[k] = (into[k] ?? 0) + n;
}

export type FromWorker =
  /**
   * `client` and `listener`: the connection's own (its ConnectionInfo), for the `closed` log line and the listener's
   * counters; absent for one that could not come back from the bridge. `elsewhere`: it ended in the upgrade bridge,
   * or could not come back from it (the bridge cannot reach the fd store).
   */
  | ({ op: 'closed'; bytesIn: number; bytesOut: number; elsewhere?: boolean } & ClosedElsewhere)
  | { op: 'stats'; seq: number; connections: PairStats[]; heapUsed: number }
  | { op: 'migrated'; seq: number; moved: number; intoBridgeMs: number; error?: string }
  | { op: 'reclaimed'; seq: number; reclaimed: Reclaimed }
  | { op: 'log'; level: 'info' | 'warn' | 'debug'; id: string; msg: string }
  /** The worker has loaded and is about to run its loop. */
  | { op: 'ready' }
  /** A batch of connections moved to or from the upgrade bridge (it is alive and working). */
  | { op: 'transfer-progress' }
  | { op: 'stopped' };
