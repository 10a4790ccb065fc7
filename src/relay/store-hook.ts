// The hook through which a relay loop keeps its connections outside the process (the fd store): carry/stored-pairs.ts implements it.
import type { ConnectionInfo, ConnectionSnapshot } from '../core/connection.js';
import type { OwnPipes } from './pair.js';
import type { Pipe } from './pipes.js';

/** What a connection in the store has here besides its sockets: the record memfd, and (kernel mode) its own pipes. */
export interface StoredFds {
  memfd: number;
  pipes?: { c2b: Pipe; b2c: Pipe };
}

export type StoreHookLog = (level: 'info' | 'warn' | 'debug', id: string, msg: string) => void;

/**
 * Told of every change to a relay loop's connections, so that a copy kept elsewhere stays current: a connection
 * deposited as it starts, its half-close state as it changes, taken out before it closes, released when it moves
 * to another process. The relay never names the store behind it.
 */
export interface StoreHook {
  /** Sends what waits (with `wait`, blocking within a bound); returns whether nothing waits. */
  flush(wait?: boolean): boolean;
  /** Deposits a new or carried connection; undefined when it runs unprotected. */
  deposit(
    info: ConnectionInfo,
    clientFd: number,
    backendFd: number,
    restored?: ConnectionSnapshot,
  ): { fds: StoredFds; own?: OwnPipes; restored?: ConnectionSnapshot } | undefined;
  /** A connection found in the store after a restart: its own pipes, with the bytes in flight in them. */
  adopted(fds: StoredFds): OwnPipes | undefined;
  /** The connection's half-close state has changed. */
  flags(id: string, fds: StoredFds, flags: ConnectionSnapshot['flags']): void;
  /** Takes the connection out before its sockets close (shutting `sockets` down when that cannot go at once). */
  remove(id: string, fds: StoredFds, sockets: number[]): void;
  /** The connection leaves for another process: close our copies only. */
  release(id: string, fds: StoredFds): void;
}
