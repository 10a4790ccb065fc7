// One carried connection as bytes, the same frame across exec (the upgrade's batches) and across a crash (the fd-store record); the store's frames never hold a key.
import type { ConnectionInfo, ConnectionSnapshot, HalfCloseFlags, UserState } from '../core/connection.js';
import { ownedCopy } from '../relay/protocol.js';

/**
 * Encodes `value` as MAGIC | u32 json length | json | blobs. Byte arrays (keys, buffered bytes) are
 * stored as blobs referenced from the JSON as {"$b": index}, and bigints as {"$n": "digits"}, so no
 * secret ever becomes a JS string. The returned Buffer may hold secrets: wipe it after use.
 */
export function encodeTagged(magic: string, value: unknown): Buffer {
  const tag = Buffer.from(magic);
  return framed(tag, 0, value);
}

export function decodeTagged<T>(magic: string, buf: Buffer): T {
  const tag = Buffer.from(magic);
  if (buf.length < tag.length + 4 || !buf.subarray(0, tag.length).equals(tag)) throw new Error(`hand-off data: not ${JSON.stringify(magic.trim())}`);
  return unframed(buf, tag.length, 'hand-off data') as T;
}

/** tag | `gap` bytes left zero | u32 json length | json | blobs. */
function framed(tag: Buffer, gap: number, value: unknown): Buffer {
  const blobs: Uint8Array[] = [];
  // Look at the raw value (`this[k]`): Buffer.toJSON would otherwise turn bytes into a number array.
  const json = JSON.stringify(value, function (this: Record<string, unknown>, k: string, v: unknown) {
    const raw = this[k];
    if (raw instanceof Uint8Array) return { $b: blobs.push(raw) - 1 };
    if (typeof raw === 'bigint') return { $n: raw.toString() };
    return v;
  });
  const head = Buffer.from(json, 'utf8');
  const size = tag.length + gap + 4 + head.length + blobs.reduce((n, b) => n + 4 + b.length, 0);
  const out = Buffer.alloc(size);
  let o = tag.copy(out, 0) + gap;
  o = out.writeUInt32LE(head.length, o);
  o += head.copy(out, o);
  for (const b of blobs) {
    o = out.writeUInt32LE(b.length, o);
    out.set(b, o);
    o += b.length;
  }
  return out;
}

/** Reads `u32 json length | json | blobs` from `at` to the end of buf; every blob is an owned copy (wipe buf after). */
function unframed(buf: Buffer, at: number, what: string): unknown {
  if (at + 4 > buf.length) throw new Error(`${what}: truncated`);
  let o = at;
  const jsonLen = buf.readUInt32LE(o);
  o += 4;
  if (o + jsonLen > buf.length) throw new Error(`${what}: truncated`);
  let value: unknown;
  try {
    value = JSON.parse(buf.subarray(o, o + jsonLen).toString('utf8'));
  } catch (e) {
    throw new Error(`${what}: ${(e as Error).message}`);
  }
  o += jsonLen;
  const blobs: Uint8Array[] = [];
  while (o < buf.length) {
    if (o + 4 > buf.length) throw new Error(`${what}: truncated blob`);
    const n = buf.readUInt32LE(o);
    o += 4;
    if (o + n > buf.length) throw new Error(`${what}: truncated blob`);
    blobs.push(ownedCopy(buf.subarray(o, o + n)));
    o += n;
  }
  return revive(value, blobs, what);
}

/** Replaces {"$b"} and {"$n"} markers in place (a walk is much cheaper than a JSON.parse reviver). */
function revive(v: unknown, blobs: Uint8Array[], what: string): unknown {
  if (v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) v[i] = revive(v[i], blobs, what);
    return v;
  }
  const o = v as Record<string, unknown>;
  if (typeof o.$b === 'number') {
    const b = blobs[o.$b];
    if (!b) throw new Error(`${what}: dangling blob reference`);
    return b;
  }
  if (typeof o.$n === 'string') return BigInt(o.$n);
  for (const k in o) o[k] = revive(o[k], blobs, what);
  return o;
}

/*
 * A connection frame: MAGIC | u8 half-close flags | u8 moving | 2 reserved bytes | u32 json length | json | blobs.
 * The two bytes after the magic sit at fixed offsets so that the fd store's copy can be rewritten in place (pwrite)
 * while the connection lives. The JSON holds the rest: { info, bytesIn, bytesOut, c2b?, b2c?, user?, pipes? }.
 * The magic keeps the name of the fd-store record this frame grew from: a store frame is byte for byte that record,
 * so an image before this codec and one after read each other's records after a crash.
 */
const MAGIC = Buffer.from('IRONSOCKET-FDSTORE-CONN-1\n');
/** Where the half-close flags byte is, and the moving byte after it. */
export const FLAGS_AT = MAGIC.length;
export const MOVING_AT = FLAGS_AT + 1;
const HEADER_GAP = 4; // flags, moving, two reserved bytes
const LENGTH_AT = FLAGS_AT + HEADER_GAP;

const FLAG_BITS: (keyof HalfCloseFlags)[] = ['clientEof', 'backendShut', 'backendEof', 'clientShut', 'closeNotifySent'];

export function encodeFlags(f: HalfCloseFlags): number {
  return FLAG_BITS.reduce((bits, name, i) => (f[name] ? bits | (1 << i) : bits), 0);
}

export function decodeFlags(bits: number): HalfCloseFlags {
  const f = { clientEof: false, backendShut: false, backendEof: false, clientShut: false, closeNotifySent: false };
  FLAG_BITS.forEach((name, i) => (f[name] = (bits & (1 << i)) !== 0));
  return f;
}

/** One carried connection, without its descriptors (they travel beside it: SCM_RIGHTS, or the store entry). */
export interface ConnectionFrame {
  pair: ConnectionSnapshot;
  /** User mode across exec: the record state (keys). Never in the fd store. */
  user?: UserState;
  /** fd store: the inodes of the connection's own splice pipes (kernel mode), client→backend and backend→client. */
  pipes?: { c2b: number; b2c: number };
  /** fd store: the connection was moving through an in-place upgrade (bytes the bridge held are not in the store). */
  moving?: boolean;
}

/**
 * Where a frame goes: `exec` (a batch to or from the upgrade bridge: everything, keys included) or `store` (the
 * fd-store record, which outlives the process: never a key nor buffered plaintext; bytes in flight are in its pipes).
 */
export type FrameUse = 'exec' | 'store';

interface FrameBody {
  info: ConnectionInfo;
  bytesIn?: number;
  bytesOut?: number;
  c2b?: Uint8Array;
  b2c?: Uint8Array;
  user?: UserState;
  pipes?: { c2b: number; b2c: number };
}

/** The frame's bytes. For `store`, refuses (throws) a frame with record state or buffered bytes. Wipe the result after use (exec). */
export function encodeConnection(f: ConnectionFrame, use: FrameUse): Buffer {
  const { info, bytesIn, bytesOut, c2b, b2c } = f.pair;
  if (use === 'store' && (f.user || c2b?.length || b2c?.length))
    throw new Error(`connection ${info.id}: an fd-store record never holds keys or buffered bytes`);
  const body: FrameBody = use === 'store' ? { info, pipes: f.pipes } : { info, bytesIn, bytesOut, c2b, b2c, user: f.user };
  const out = framed(MAGIC, HEADER_GAP, body);
  out[FLAGS_AT] = encodeFlags(f.pair.flags);
  out[MOVING_AT] = f.moving ? 1 : 0;
  return out;
}

/** Reads a frame back; throws saying what is wrong with bytes that are not one. `store` refuses a frame holding keys or buffered bytes. */
export function decodeConnection(buf: Buffer, use: FrameUse, what = 'connection frame'): ConnectionFrame {
  if (buf.length < LENGTH_AT + 4 || !buf.subarray(0, MAGIC.length).equals(MAGIC)) throw new Error(`${what} is not an Iron Socket connection record`);
  const jsonAt = LENGTH_AT + 4;
  const len = buf.readUInt32LE(LENGTH_AT);
  if (use === 'store' && jsonAt + len !== buf.length) throw new Error(`${what} is truncated (${buf.length} bytes, header says ${jsonAt + len})`);
  const body = unframed(buf, LENGTH_AT, what) as FrameBody | null;
  const info = body?.info;
  if (
    !body ||
    !info ||
    typeof info.id !== 'string' ||
    typeof info.client !== 'string' ||
    typeof info.backend !== 'string' ||
    (info.mode !== 'kernel' && info.mode !== 'user')
  ) {
    throw new Error(`${what}: incomplete connection description`);
  }
  const pipes = body.pipes;
  if (pipes !== undefined && !(Number.isSafeInteger(pipes.c2b) && Number.isSafeInteger(pipes.b2c))) throw new Error(`${what}: malformed pipe inodes`);
  if (use === 'store' && (body.user || body.c2b || body.b2c))
    throw new Error(`${what}: holds keys or buffered bytes, which a stored record never does; refused`);
  const flags = decodeFlags(buf[FLAGS_AT]!);
  const pair: ConnectionSnapshot = { info, bytesIn: body.bytesIn ?? 0, bytesOut: body.bytesOut ?? 0, flags };
  if (body.c2b) pair.c2b = body.c2b;
  if (body.b2c) pair.b2c = body.b2c;
  const frame: ConnectionFrame = { pair };
  if (body.user) frame.user = body.user;
  if (pipes) frame.pipes = pipes;
  if (use === 'store') frame.moving = buf[MOVING_AT] === 1;
  return frame;
}
