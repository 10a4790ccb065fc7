// A relay loop's side of the fd store (its StoreHook): deposits each connection it starts relaying, keeps its record current, and takes it out before closing.
import { SHUT_RDWR, sys } from '../kernel/libc.js';
import { markMoving, pipeInode, updateFlags, writeRecord } from './fd-store-record.js';
import { connectionFdName, type FdStore } from '../service/fd-store.js';
import { NotifyError } from '../service/notify.js';
import type { OwnPipes } from '../relay/pair.js';
import type { StoreHook, StoreHookLog, StoredFds } from '../relay/store-hook.js';
import { PipePool, type Pipe } from '../relay/pipes.js';
import type { ConnectionInfo, ConnectionSnapshot } from '../core/connection.js';

const NO_FLAGS: ConnectionSnapshot['flags'] = { clientEof: false, backendShut: false, backendEof: false, clientShut: false, closeNotifySent: false };

function closeFds(s: StoredFds): void {
  sys.close(s.memfd);
  if (s.pipes) for (const p of [s.pipes.c2b, s.pipes.b2c]) PipePool.close(p);
}

/**
 * A store message waiting its turn: a deposit (with `fds`, which belong to the live connection) or a
 * removal. Sent in order, so a removal never overtakes the deposit it undoes.
 */
interface Queued {
  id: string;
  name: string;
  fds?: number[];
}

/**
 * Messages to the store never block the relay: a service manager that is not reading (PID 1 busy,
 * its queue full) would otherwise stall every connection of this loop. What does not go at once
 * waits in a queue, retried on the loop's ticks (flush); meanwhile a connection waiting for its
 * deposit is merely unprotected, and one waiting for its removal has its sockets shut down, so its
 * peers see the close although the store still holds duplicates.
 */
export class StoredPairs implements StoreHook {
  private readonly queue: Queued[] = [];

  constructor(
    private readonly store: FdStore,
    private readonly log: StoreHookLog,
  ) {}

  /** How many store messages wait for room in the manager's queue. */
  get pending(): number {
    return this.queue.length;
  }

  /**
   * Sends what waits, oldest first; stops at a manager whose queue is still full, or with `wait`
   * blocks (bounded by the notifier's timeout) instead: before the loop ends or its connections
   * leave for an exec, when nothing would retry later. Returns whether the queue is empty.
   */
  flush(wait = false): boolean {
    while (this.queue.length > 0) {
      const q = this.queue[0]!;
      try {
        if (!this.trySend(q, wait)) return false;
      } catch (e) {
        const what = q.fds ? 'not in the fd store (a crash of the proxy will close it)' : 'could not take it out of the fd store';
        this.log('warn', q.id, `${what}: ${(e as Error).message}`);
      }
      this.queue.shift();
    }
    return true;
  }

  /** Sends at once when nothing waits before it and the manager has room, else queues it. Throws on any failure but a full queue. */
  private send(q: Queued): 'sent' | 'queued' {
    if (this.queue.length === 0 && this.trySend(q, false)) return 'sent';
    if (this.queue.length === 0) this.log('info', q.id, 'the fd store is not taking messages right now (its queue is full): they wait their turn');
    this.queue.push(q);
    return 'queued';
  }

  /** false: the manager's queue is full (EAGAIN), try later. */
  private trySend(q: Queued, wait: boolean): boolean {
    try {
      if (q.fds) this.store.deposit(q.name, q.fds, { poll: false, wait });
      else this.store.remove(q.name, { wait });
      return true;
    } catch (e) {
      if (!wait && e instanceof NotifyError && e.code === 'EAGAIN') return false;
      throw e;
    }
  }

  /** Takes a deposit that never reached the store out of the queue; returns whether there was one. */
  private unqueueDeposit(name: string): boolean {
    const i = this.queue.findIndex((q) => q.name === name && q.fds !== undefined);
    if (i >= 0) this.queue.splice(i, 1);
    return i >= 0;
  }

  /**
   * Deposits a connection: record memfd, client, backend and (kernel mode) two pipes of its own, in
   * one FDSTORE=1 message under "conn-<id>". One carried by an upgrade (`restored`) was deposited by
   * the image before: that entry (whose pipes and memfd are gone) is removed first. Bytes the upgrade
   * carried in buffers move into the new pipes, so that all of it lives in the kernel again.
   * Returns undefined when the store would not take it: the connection then runs unprotected.
   */
  deposit(
    info: ConnectionInfo,
    clientFd: number,
    backendFd: number,
    restored?: ConnectionSnapshot,
  ): { fds: StoredFds; own?: OwnPipes; restored?: ConnectionSnapshot } | undefined {
    const name = connectionFdName(info.id);
    let fds: StoredFds | undefined;
    try {
      if (restored) this.send({ id: info.id, name });
      const pipes = info.mode === 'kernel' ? { c2b: pipe(), b2c: pipe() } : undefined;
      const memfd = writeRecordOrClose(info, pipes, restored?.flags ?? NO_FLAGS);
      fds = { memfd, pipes };
      const pipeFds = pipes ? [pipes.c2b.r, pipes.c2b.w, pipes.b2c.r, pipes.b2c.w] : [];
      // FDPOLL=0: by default systemd drops a stored socket at its first hangup, and a connection whose
      // client side is shut both ways may still be moving bytes to its backend. Removal is ours to do.
      this.send({ id: info.id, name, fds: [memfd, clientFd, backendFd, ...pipeFds] });
      // Only now: closing the pipes above on a failure must not take carried bytes with them.
      const own = pipes ? carryIntoPipes(pipes, restored) : undefined;
      return { fds, own: own?.own, restored: own?.restored ?? restored };
    } catch (e) {
      if (fds) closeFds(fds);
      this.log('warn', info.id, `not in the fd store (a crash of the proxy will close it): ${(e as Error).message}`);
      return undefined;
    }
  }

  /** A connection found in the store after a restart: its pipes, with whatever bytes were in flight in them. */
  adopted(fds: StoredFds): OwnPipes | undefined {
    const p = fds.pipes;
    return p && { ...p, held: { c2b: sys.readable(p.c2b.r), b2c: sys.readable(p.b2c.r) } };
  }

  /** Writes the connection's new half-close state into its record. */
  flags(id: string, fds: StoredFds, flags: ConnectionSnapshot['flags']): void {
    const r = updateFlags(fds.memfd, flags);
    if (r < 0) this.log('warn', id, `cannot update its fd store record (errno ${-r})`);
  }

  /**
   * Takes the connection out of the store (so that closing its sockets here closes them), then
   * closes the memfd and pipes. When the removal cannot go at once, `sockets` (client, backend) are
   * shut down both ways: the peers see the close now, whatever the store still holds.
   */
  remove(id: string, fds: StoredFds, sockets: number[]): void {
    const name = connectionFdName(id);
    let out = this.unqueueDeposit(name) && !this.queue.some((q) => q.name === name);
    if (!out) {
      try {
        out = this.send({ id, name }) === 'sent';
      } catch (e) {
        this.log('warn', id, `could not take it out of the fd store (its sockets are shut down instead): ${(e as Error).message}`);
      }
    }
    if (!out) for (const fd of sockets) sys.shutdown(fd, SHUT_RDWR);
    closeFds(fds);
  }

  /**
   * Closes this loop's copies only: the connection moves to another process (an upgrade), and its
   * entry stays until the new image replaces it. The record says so first: should the proxy die
   * meanwhile, a restart must not resume a connection whose bytes in flight sit in the bridge.
   */
  release(id: string, fds: StoredFds): void {
    this.unqueueDeposit(connectionFdName(id)); // the new image deposits it
    if (markMoving(fds.memfd) < 0) this.log('warn', id, 'cannot mark its fd store record as moving');
    closeFds(fds);
  }
}

function pipe(): Pipe {
  const [r, w] = sys.pipe();
  return { r, w };
}

function writeRecordOrClose(info: ConnectionInfo, pipes: StoredFds['pipes'], flags: ConnectionSnapshot['flags']): number {
  try {
    return writeRecord({ info, flags, pipes: pipes && { c2b: pipeInode(pipes.c2b.r)!, b2c: pipeInode(pipes.b2c.r)! } });
  } catch (e) {
    if (pipes) for (const p of [pipes.c2b, pipes.b2c]) PipePool.close(p);
    throw e;
  }
}

/** Moves bytes an upgrade carried in buffers into the connection's own pipes; what does not fit stays buffered. */
function carryIntoPipes(pipes: { c2b: Pipe; b2c: Pipe }, restored: ConnectionSnapshot | undefined): { own: OwnPipes; restored?: ConnectionSnapshot } {
  const held = { c2b: 0, b2c: 0 };
  if (!restored) return { own: { ...pipes, held } };
  const rest = { ...restored };
  for (const dir of ['c2b', 'b2c'] as const) {
    const bytes = rest[dir];
    if (bytes?.length && PipePool.fill(pipes[dir], bytes)) {
      held[dir] = bytes.length;
      rest[dir] = undefined;
    }
  }
  return { own: { ...pipes, held }, restored: rest };
}
