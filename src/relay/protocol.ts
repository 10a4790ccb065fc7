// Messages between the main thread and the relay worker (structured-clone safe: no keys ever cross here for kernel mode).
import type { PairInfo, PairSnapshot } from './pair.js';

export interface WorkerInit {
  /** eventfd the main thread writes to after posting, to wake epoll_wait. */
  wakeFd: number;
  idleTimeoutMs: number;
  /** Set when this worker must first take over connections from a hand-off memfd (after exec). */
  handoffFd?: number;
}

/** Record state for a `user`-mode connection (the only case where keys cross to the worker, in memory). */
export interface UserState {
  suite: string;
  version: 'TLSv1.2' | 'TLSv1.3';
  tx: { key: Uint8Array; iv: Uint8Array; seq: bigint };
  rx: { key: Uint8Array; iv: Uint8Array; seq: bigint };
  secrets?: { client: Uint8Array; server: Uint8Array };
  inbox?: Uint8Array;
  plain?: Uint8Array;
  out?: Uint8Array;
}

/** One connection as an upgrade carries it: fds, relay state, and (user mode) record state. */
export interface CarriedPair {
  clientFd: number;
  backendFd: number;
  pair: PairSnapshot;
  user?: UserState;
}

export type ToWorker =
  | { op: 'add'; info: PairInfo; clientFd: number; backendFd: number; user?: UserState; restored?: PairSnapshot }
  /** Stop relaying at a clean point and report every connection's state (for an upgrade). */
  | { op: 'freeze'; seq: number }
  /** Resume after a freeze (the upgrade did not happen). */
  | { op: 'thaw' }
  | { op: 'configure'; idleTimeoutMs: number }
  | { op: 'stats'; seq: number }
  | { op: 'stop' };

export interface PairStats {
  id: string;
  bytesIn: number;
  bytesOut: number;
  lastActivity: number;
}

export type FromWorker =
  | { op: 'closed'; id: string; reason: string; level: 'info' | 'warn'; bytesIn: number; bytesOut: number }
  | { op: 'stats'; seq: number; connections: PairStats[] }
  | { op: 'frozen'; seq: number; pairs: CarriedPair[] }
  /** After exec: what the worker took over from the hand-off state (no keys). */
  | { op: 'restored'; restored: RestoredSummary }
  | { op: 'log'; level: 'info' | 'warn' | 'debug'; id: string; msg: string }
  | { op: 'stopped' };

/** The non-secret part of a hand-off state, as the worker that restored it reports to the main thread. */
export interface RestoredSummary {
  generation: number;
  attempt: string;
  startedAt: string;
  frozenAt: number;
  /** When the worker resumed relaying (wall-clock ms). */
  resumedAt: number;
  /** Where the stall went, in ms: old image freeze→exec, exec→worker running, reading+checking+adopting. */
  breakdown: { freezeToExec: number; execToWorker: number; restore: number };
  counters: Record<string, number>;
  probe: import('../kernel/probe.js').KernelProbe;
  listeners: { fd: number; address: string }[];
  nextId: number;
  connections: PairInfo[];
  failed: { id: string; reason: string }[];
}
