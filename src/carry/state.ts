// The hand-off state an upgrade carries across exec, and its binary encoding in an anonymous memfd (never on disk).
import { EAGAIN, EINTR, F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_WRITE, errnoName, sys } from '../kernel/libc.js';
import type { KernelProbe } from '../kernel/probe.js';
import { decodeTagged, encodeTagged } from './codec.js';
import type { CarriedTickets } from '../edge/session-tickets.js';

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
  /** Wall-clock ms just before execve. */
  execAt: number;
  /** The largest pause one connection saw while moving into the bridge (ms). */
  intoBridgeMs: number;
  /** How many connections went into the bridge (spread over the relay workers on the way back). */
  moved: number;
  counters: Record<string, number>;
  /** The same counters per listener name, for what was counted with its listener known (absent from images before them). */
  listenerCounters?: Record<string, Record<string, number>>;
  probe: KernelProbe;
  listeners: CarriedListener[];
  /**
   * The bridge process holding every live connection while this image execs, and our end of its link; `serving`:
   * it accepts new clients meanwhile (the new image stops it before accepting itself).
   */
  bridge: { linkFd: number; pid: number; serving?: boolean };
  nextId: number;
  /** Whether the previous image kept its connections in systemd's fd store (they keep their ids, so their entries stay valid). */
  fdStore?: boolean;
  /** The session ticket keys (a blob: never a string), so that every ticket issued before the upgrade resumes after it. */
  tickets?: CarriedTickets;
}

const STATE_MAGIC = 'IRONSOCKET-HANDOFF-2\n';

export const encodeState = (state: HandoffState): Buffer => encodeTagged(STATE_MAGIC, state);
export const decodeState = (buf: Buffer): HandoffState => decodeTagged<HandoffState>(STATE_MAGIC, buf);

/**
 * Seals on every state memfd (the hand-off across exec, a batch to or from the bridge) before it leaves its
 * writer: nobody holding it can write, grow, shrink it, or take the seals off. Its receiver refuses one without.
 */
export const STATE_SEALS = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;

/** Throws unless fd is a memfd carrying every seal in `want`; the caller still owns (and closes) fd. */
export function requireSeals(fd: number, want: number, what: string): void {
  let seals: number;
  try {
    seals = sys.getSeals(fd);
  } catch (e) {
    throw new Error(`${what} fd ${fd} is not a sealable memfd (${(e as Error).message}); refused`);
  }
  if ((seals & want) !== want) throw new Error(`${what} fd ${fd} is not sealed (seals 0x${seals.toString(16)}, need 0x${want.toString(16)}); refused`);
}

/** Writes encoded data into a new memfd, seals it (STATE_SEALS) and rewinds it; returns the fd (close-on-exec still set). */
export function writeStateMemfd(encoded: Buffer): number {
  const fd = sys.memfdCreateSealable('ironsocket-handoff');
  try {
    let o = 0;
    while (o < encoded.length) {
      const w = sys.write(fd, encoded.subarray(o), encoded.length - o);
      if (w === -EINTR) continue;
      if (w < 0) throw new Error(`writing hand-off state: ${errnoName(-w)}`);
      o += w;
    }
    sys.addSeals(fd, STATE_SEALS);
  } catch (e) {
    sys.close(fd);
    throw e;
  }
  sys.rewind(fd);
  return fd;
}

/**
 * Reads a whole sealed memfd (from the start) and closes it; refuses (throws, fd left open) one that is not
 * sealed. The returned Buffer holds secrets: the caller zeroes it. A sealed memfd cannot be emptied
 * (ftruncate fails); its pages are freed when its last descriptor closes: the writer closed its own once it
 * sent the batch (or it was this very descriptor, across exec), so this close frees them.
 */
export function readStateMemfd(fd: number): Buffer {
  requireSeals(fd, STATE_SEALS, 'state memfd');
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
