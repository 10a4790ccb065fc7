// A relay loop's side of the fd store: deposits each connection it starts relaying, keeps its record current, and takes it out before closing.
import { sys } from '../kernel/libc.js';
import { markMoving, pipeInode, updateFlags, writeRecord } from '../fdstore/record.js';
import { connectionFdName, type FdStore } from '../systemd/fd-store.js';
import type { OwnPipes, PairInfo, PairSnapshot } from './pair.js';
import { PipePool, type Pipe } from './pipes.js';

/** What a connection in the store has here besides its sockets: the record memfd, and (kernel mode) its own pipes. */
export interface StoredFds {
  memfd: number;
  pipes?: { c2b: Pipe; b2c: Pipe };
}

type Log = (level: 'info' | 'warn' | 'debug', id: string, msg: string) => void;

const NO_FLAGS: PairSnapshot['flags'] = { clientEof: false, backendShut: false, backendEof: false, clientShut: false, closeNotifySent: false };

function closeFds(s: StoredFds): void {
  sys.close(s.memfd);
  if (s.pipes) for (const p of [s.pipes.c2b, s.pipes.b2c]) PipePool.close(p);
}

export class StoredPairs {
  constructor(
    private readonly store: FdStore,
    private readonly log: Log,
  ) {}

  /**
   * Deposits a connection: record memfd, client, backend and (kernel mode) two pipes of its own, in
   * one FDSTORE=1 message under "conn-<id>". One carried by an upgrade (`restored`) was deposited by
   * the image before: that entry (whose pipes and memfd are gone) is removed first. Bytes the upgrade
   * carried in buffers move into the new pipes, so that all of it lives in the kernel again.
   * Returns undefined when the store would not take it: the connection then runs unprotected.
   */
  deposit(
    info: PairInfo,
    clientFd: number,
    backendFd: number,
    restored?: PairSnapshot,
  ): { fds: StoredFds; own?: OwnPipes; restored?: PairSnapshot } | undefined {
    const name = connectionFdName(info.id);
    let fds: StoredFds | undefined;
    try {
      if (restored) this.store.remove(name);
      const pipes = info.mode === 'kernel' ? { c2b: pipe(), b2c: pipe() } : undefined;
      const memfd = writeRecordOrClose(info, pipes, restored?.flags ?? NO_FLAGS);
      fds = { memfd, pipes };
      const pipeFds = pipes ? [pipes.c2b.r, pipes.c2b.w, pipes.b2c.r, pipes.b2c.w] : [];
      // FDPOLL=0: by default systemd drops a stored socket at its first hangup, and a connection whose
      // client side is shut both ways may still be moving bytes to its backend. Removal is ours to do.
      this.store.deposit(name, [memfd, clientFd, backendFd, ...pipeFds], { poll: false });
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
  flags(id: string, fds: StoredFds, flags: PairSnapshot['flags']): void {
    const r = updateFlags(fds.memfd, flags);
    if (r < 0) this.log('warn', id, `cannot update its fd store record (errno ${-r})`);
  }

  /** Takes the connection out of the store (so that closing it here closes it), then closes the memfd and pipes. */
  remove(id: string, fds: StoredFds): void {
    try {
      this.store.remove(connectionFdName(id));
    } catch (e) {
      this.log('warn', id, `could not take it out of the fd store; its peer will not see the close: ${(e as Error).message}`);
    }
    closeFds(fds);
  }

  /**
   * Closes this loop's copies only: the connection moves to another process (an upgrade), and its
   * entry stays until the new image replaces it. The record says so first: should the proxy die
   * meanwhile, a restart must not resume a connection whose bytes in flight sit in the bridge.
   */
  release(id: string, fds: StoredFds): void {
    if (markMoving(fds.memfd) < 0) this.log('warn', id, 'cannot mark its fd store record as moving');
    closeFds(fds);
  }
}

function pipe(): Pipe {
  const [r, w] = sys.pipe();
  return { r, w };
}

function writeRecordOrClose(info: PairInfo, pipes: StoredFds['pipes'], flags: PairSnapshot['flags']): number {
  try {
    return writeRecord({ info, flags, pipes: pipes && { c2b: pipeInode(pipes.c2b.r)!, b2c: pipeInode(pipes.b2c.r)! } });
  } catch (e) {
    if (pipes) for (const p of [pipes.c2b, pipes.b2c]) PipePool.close(p);
    throw e;
  }
}

/** Moves bytes an upgrade carried in buffers into the connection's own pipes; what does not fit stays buffered. */
function carryIntoPipes(pipes: { c2b: Pipe; b2c: Pipe }, restored: PairSnapshot | undefined): { own: OwnPipes; restored?: PairSnapshot } {
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
