// The hand-off state an upgrade carries across exec, and its binary encoding in an anonymous memfd (never on disk).
import { EAGAIN, EINTR, errnoName, sys } from '../kernel/libc.js';
import type { KernelProbe } from '../kernel/probe.js';
import type { CarriedPair } from '../relay/protocol.js';

export interface CarriedListener {
  fd: number;
  /** "host:port" it was bound to; checked against getsockname on restore. */
  address: string;
}

export interface HandoffState {
  /** Generation the new image becomes (the first image is 1). */
  generation: number;
  /** Upgrade attempt id, so `ironsocket upgrade` can match the result. */
  attempt: string;
  /** When the first image started (ISO time), kept across upgrades. */
  startedAt: string;
  /** Wall-clock ms at which the relays stopped in the old image (for the stall figure). */
  frozenAt: number;
  /** Wall-clock ms just before execve (freeze → exec is the old image's share of the stall). */
  execAt: number;
  counters: Record<string, number>;
  probe: KernelProbe;
  listeners: CarriedListener[];
  pairs: CarriedPair[];
  nextId: number;
}

const MAGIC = Buffer.from('IRONSOCKET-HANDOFF-1\n');

/**
 * Encodes as MAGIC | u32 json length | json | blobs. Byte arrays (keys, buffered bytes) are stored
 * as blobs referenced from the JSON as {"$b": index}, and bigints as {"$n": "digits"}, so no secret
 * ever becomes a JS string. The returned Buffer holds secrets: wipe it after writing.
 */
export function encodeState(state: HandoffState): Buffer {
  const blobs: Uint8Array[] = [];
  // Look at the raw value (`this[k]`): Buffer.toJSON would otherwise turn bytes into a number array.
  const json = JSON.stringify(state, function (this: Record<string, unknown>, k: string, v: unknown) {
    const raw = this[k];
    if (raw instanceof Uint8Array) return { $b: blobs.push(raw) - 1 };
    if (typeof raw === 'bigint') return { $n: raw.toString() };
    return v;
  });
  const head = Buffer.from(json, 'utf8');
  const size = MAGIC.length + 4 + head.length + blobs.reduce((n, b) => n + 4 + b.length, 0);
  const out = Buffer.alloc(size);
  let o = MAGIC.copy(out, 0);
  o = out.writeUInt32LE(head.length, o);
  o += head.copy(out, o);
  for (const b of blobs) {
    o = out.writeUInt32LE(b.length, o);
    out.set(b, o);
    o += b.length;
  }
  return out;
}

export function decodeState(buf: Buffer): HandoffState {
  if (buf.length < MAGIC.length + 4 || !buf.subarray(0, MAGIC.length).equals(MAGIC)) throw new Error('hand-off state: bad magic');
  let o = MAGIC.length;
  const jsonLen = buf.readUInt32LE(o);
  o += 4;
  const json = buf.subarray(o, o + jsonLen).toString('utf8');
  o += jsonLen;
  const blobs: Uint8Array[] = [];
  while (o < buf.length) {
    const n = buf.readUInt32LE(o);
    o += 4;
    if (o + n > buf.length) throw new Error('hand-off state: truncated blob');
    blobs.push(new Uint8Array(buf.subarray(o, o + n)));
    o += n;
  }
  return JSON.parse(json, (_k, v: unknown) => {
    if (v && typeof v === 'object' && '$b' in v) {
      const b = blobs[(v as { $b: number }).$b];
      if (!b) throw new Error('hand-off state: dangling blob reference');
      return b;
    }
    if (v && typeof v === 'object' && '$n' in v) return BigInt((v as { $n: string }).$n);
    return v;
  }) as HandoffState;
}

/** Writes the encoded state into a new memfd and rewinds it; returns the fd (close-on-exec still set). */
export function writeStateMemfd(encoded: Buffer): number {
  const fd = sys.memfdCreate('ironsocket-handoff');
  let o = 0;
  while (o < encoded.length) {
    const w = sys.write(fd, encoded.subarray(o), encoded.length - o);
    if (w === -EINTR) continue;
    if (w < 0) {
      sys.close(fd);
      throw new Error(`writing hand-off state: ${errnoName(-w)}`);
    }
    o += w;
  }
  sys.rewind(fd);
  return fd;
}

/** Reads a whole memfd (from the start) and closes it. The returned Buffer holds secrets. */
export function readStateMemfd(fd: number): Buffer {
  sys.rewind(fd);
  const parts: Buffer[] = [];
  const chunk = Buffer.alloc(1 << 16);
  for (;;) {
    const r = sys.read(fd, chunk, chunk.length);
    if (r === -EINTR || r === -EAGAIN) continue;
    if (r < 0) throw new Error(`reading hand-off state: ${errnoName(-r)}`);
    if (r === 0) break;
    parts.push(Buffer.from(chunk.subarray(0, r)));
  }
  chunk.fill(0);
  sys.close(fd);
  const all = Buffer.concat(parts);
  for (const p of parts) p.fill(0);
  return all;
}
