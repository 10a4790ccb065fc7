// The memfd deposited in the fd store with each connection: which descriptor is which, and the relay state a restart needs (never a key).
import fs from 'node:fs';
import { EINTR, F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, errnoName, sys } from '../kernel/libc.js';
import type { ConnectionInfo, HalfCloseFlags } from '../core/connection.js';
import { FLAGS_AT, MOVING_AT, decodeConnection, encodeConnection, encodeFlags } from './codec.js';

export { decodeFlags, encodeFlags } from './codec.js';

/** The memfd's name, as /proc/self/fd shows it ("/memfd:ironsocket-conn (deleted)"): how a restart tells it from the sockets. */
export const RECORD_MEMFD_NAME = 'ironsocket-conn';

/**
 * Seals on a record once written: its size is fixed and the seals stay. Not F_SEAL_WRITE: the flag bytes are
 * rewritten in place (pwrite) while the connection lives; that changes no length. A restart refuses a record without them.
 */
export const RECORD_SEALS = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW;
/** A record is a few hundred bytes; anything much larger is not one of ours. */
const MAX_RECORD_BYTES = 64 * 1024;

/** What the memfd says about its connection. Pipes are named by inode: the store may hand descriptors back in any order. */
export interface StoredConnection {
  info: ConnectionInfo;
  /** The inodes of the connection's own splice pipes (kernel mode), client→backend and backend→client. */
  pipes?: { c2b: number; b2c: number };
  flags: HalfCloseFlags;
  /** The connection was moving through an in-place upgrade (bytes the bridge held are not in the store). */
  moving?: boolean;
}

/** The inode of a pipe end ("pipe:[1234]" in /proc/self/fd), or undefined when the fd is not a pipe. */
export function pipeInode(fd: number): number | undefined {
  const m = /^pipe:\[(\d+)\]$/.exec(describeFd(fd));
  return m ? Number(m[1]) : undefined;
}

/** What /proc/self/fd says the descriptor is: "socket:[n]", "pipe:[n]", "/memfd:name (deleted)", a path; "" when not open. */
export function describeFd(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return '';
  }
}

export function isRecordMemfd(fd: number): boolean {
  return describeFd(fd).startsWith(`/memfd:${RECORD_MEMFD_NAME}`);
}

/** A new memfd (close-on-exec) holding the record; the caller deposits it and keeps it to update the flags. */
export function writeRecord(r: StoredConnection): number {
  // The connection's frame as an upgrade carries it, less what a record never holds: keys, buffered bytes, byte counts.
  const out = encodeConnection({ pair: { info: r.info, bytesIn: 0, bytesOut: 0, flags: r.flags }, pipes: r.pipes, moving: r.moving }, 'store');
  const fd = sys.memfdCreateSealable(RECORD_MEMFD_NAME);
  try {
    for (let o = 0; o < out.length;) {
      const w = sys.pwrite(fd, out.subarray(o), o);
      if (w === -EINTR) continue;
      if (w <= 0) throw new Error(`writing a connection record: ${w < 0 ? errnoName(-w) : 'no progress'}`);
      o += w;
    }
    sys.addSeals(fd, RECORD_SEALS);
  } catch (e) {
    sys.close(fd);
    throw e;
  }
  return fd;
}

/** Rewrites the half-close state in place (the store holds the same file, so it sees the change). Returns -errno on failure. */
export function updateFlags(fd: number, f: HalfCloseFlags): number {
  const r = sys.pwrite(fd, Buffer.of(encodeFlags(f)), FLAGS_AT);
  return r < 0 ? r : 0;
}

/** Marks the record: the connection moves to the upgrade bridge, and what it has in flight leaves the stored pipes. */
export function markMoving(fd: number): number {
  const r = sys.pwrite(fd, Buffer.of(1), MOVING_AT);
  return r < 0 ? r : 0;
}

/** Reads a record back; throws an Error saying what is wrong with a descriptor that is not a well-formed record. */
export function readRecord(fd: number): StoredConnection {
  let seals: number;
  try {
    seals = sys.getSeals(fd);
  } catch (e) {
    throw new Error(`fd ${fd} is not an Iron Socket connection record (${(e as Error).message})`);
  }
  if ((seals & RECORD_SEALS) !== RECORD_SEALS) throw new Error(`connection record fd ${fd} is not sealed (seals 0x${seals.toString(16)}); refused`);
  const buf = Buffer.alloc(MAX_RECORD_BYTES + 1);
  let got = 0;
  sys.rewind(fd);
  for (;;) {
    const r = sys.read(fd, buf.subarray(got), buf.length - got);
    if (r === -EINTR) continue;
    if (r < 0) throw new Error(`reading connection record fd ${fd}: ${errnoName(-r)}`);
    if (r === 0) break;
    got += r;
    if (got > MAX_RECORD_BYTES) throw new Error(`connection record fd ${fd} is larger than ${MAX_RECORD_BYTES} bytes`);
  }
  const frame = decodeConnection(buf.subarray(0, got), 'store', `connection record fd ${fd}`);
  return { info: frame.pair.info, pipes: frame.pipes, flags: frame.pair.flags, moving: frame.moving };
}
