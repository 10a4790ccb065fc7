// The memfd deposited in the fd store with each connection: which descriptor is which, and the relay state a restart needs (never a key).
import fs from 'node:fs';
import { EINTR, F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, errnoName, sys } from '../kernel/libc.js';
import type { ConnectionInfo, HalfCloseFlags } from '../core/connection.js';

/** The memfd's name, as /proc/self/fd shows it ("/memfd:ironsocket-conn (deleted)"): how a restart tells it from the sockets. */
export const RECORD_MEMFD_NAME = 'ironsocket-conn';

const MAGIC = Buffer.from('IRONSOCKET-FDSTORE-CONN-1\n');
/** The one byte that changes while the connection lives: its half-close state, rewritten in place (pwrite). */
const FLAGS_AT = MAGIC.length;
/** Set (1) once the connection has left for the upgrade bridge: its stored pipes no longer hold its bytes in flight. */
const MOVING_AT = FLAGS_AT + 1;
const LENGTH_AT = FLAGS_AT + 4; // flags byte, moving byte, two reserved bytes, then the u32 length of the JSON
const JSON_AT = LENGTH_AT + 4;
/**
 * Seals on a record once written: its size is fixed and the seals stay. Not F_SEAL_WRITE: the flag bytes are
 * rewritten in place (pwrite) while the connection lives; that changes no length. A restart refuses a record without them.
 */
export const RECORD_SEALS = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW;
/** A record is a few hundred bytes; anything much larger is not one of ours. */
const MAX_RECORD_BYTES = 64 * 1024;

const FLAG_BITS: (keyof HalfCloseFlags)[] = ['clientEof', 'backendShut', 'backendEof', 'clientShut', 'closeNotifySent'];

/** What the memfd says about its connection. Pipes are named by inode: the store may hand descriptors back in any order. */
export interface StoredConnection {
  info: ConnectionInfo;
  /** The inodes of the connection's own splice pipes (kernel mode), client→backend and backend→client. */
  pipes?: { c2b: number; b2c: number };
  flags: HalfCloseFlags;
  /** The connection was moving through an in-place upgrade (bytes the bridge held are not in the store). */
  moving?: boolean;
}

export function encodeFlags(f: HalfCloseFlags): number {
  return FLAG_BITS.reduce((bits, name, i) => (f[name] ? bits | (1 << i) : bits), 0);
}

export function decodeFlags(bits: number): HalfCloseFlags {
  const f = { clientEof: false, backendShut: false, backendEof: false, clientShut: false, closeNotifySent: false };
  FLAG_BITS.forEach((name, i) => (f[name] = (bits & (1 << i)) !== 0));
  return f;
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
  const json = Buffer.from(JSON.stringify({ info: r.info, pipes: r.pipes }));
  const out = Buffer.alloc(JSON_AT + json.length);
  MAGIC.copy(out, 0);
  out[FLAGS_AT] = encodeFlags(r.flags);
  out.writeUInt32LE(json.length, LENGTH_AT);
  json.copy(out, JSON_AT);
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
  if (got < JSON_AT || !buf.subarray(0, MAGIC.length).equals(MAGIC)) throw new Error(`fd ${fd} is not an Iron Socket connection record`);
  const len = buf.readUInt32LE(LENGTH_AT);
  if (JSON_AT + len !== got) throw new Error(`connection record fd ${fd} is truncated (${got} bytes, header says ${JSON_AT + len})`);
  let body: { info?: ConnectionInfo; pipes?: { c2b: number; b2c: number } };
  try {
    body = JSON.parse(buf.subarray(JSON_AT, got).toString('utf8'));
  } catch (e) {
    throw new Error(`connection record fd ${fd}: ${(e as Error).message}`);
  }
  const info = body.info;
  if (
    !info ||
    typeof info.id !== 'string' ||
    typeof info.client !== 'string' ||
    typeof info.backend !== 'string' ||
    (info.mode !== 'kernel' && info.mode !== 'user')
  ) {
    throw new Error(`connection record fd ${fd}: incomplete connection description`);
  }
  const pipes = body.pipes;
  if (pipes !== undefined && !(Number.isSafeInteger(pipes.c2b) && Number.isSafeInteger(pipes.b2c))) {
    throw new Error(`connection record fd ${fd}: malformed pipe inodes`);
  }
  return { info, pipes, flags: decodeFlags(buf[FLAGS_AT]!), moving: buf[MOVING_AT] === 1 };
}
