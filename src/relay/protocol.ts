// Messages between the main thread and the relay worker (structured-clone safe: no keys ever cross here for kernel mode).
import type { PairInfo } from './pair.js';

export interface WorkerInit {
  /** eventfd the main thread writes to after posting, to wake epoll_wait. */
  wakeFd: number;
  idleTimeoutMs: number;
}

export type ToWorker =
  | { op: 'add'; info: PairInfo; clientFd: number; backendFd: number; early?: Uint8Array }
  | { op: 'stats'; seq: number }
  | { op: 'abort'; id: string; reason: string; alert?: number }
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
  | { op: 'log'; level: 'info' | 'warn' | 'debug'; id: string; msg: string }
  | { op: 'stopped' };
