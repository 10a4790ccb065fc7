// The bridge link: messages, and batches of live connections with their fds, between an image and the upgrade bridge.
import { FdChannel, MAX_FDS_PER_MESSAGE } from '../kernel/fdpass.js';
import { errnoName, sys } from '../kernel/libc.js';
import type { CarriedConnection, ClosedElsewhere } from '../relay/protocol.js';
import { decodeConnection, decodeTagged, encodeConnection, encodeTagged } from './codec.js';
import { readStateMemfd, writeStateMemfd } from './state.js';

/**
 * Bumped whenever a message changes: an image and a bridge from different releases must agree. 2: batch
 * memfds (and the hand-off memfd across exec) are sealed, and an unsealed one is refused, so an image of
 * protocol 1 refuses to upgrade in place to this code (restart once instead). 3: a batch holds one codec frame
 * per connection (codec.ts, the frame the fd-store record is made of). Still 3: `serve` and `stop-accepting` are
 * additions an image sends only to a bridge whose `ready` says `accepts` (an image of before never sends them).
 */
export const LINK_PROTOCOL = 3;

/** Connections per batch: each batch pauses only its own connections, for about one batch's worth of work. */
export const BATCH = 8;

export type LinkHeader =
  /** bridge → image: loaded and listening; `accepts`: it can take the listening sockets over while the image execs (absent: an older bridge). */
  | { op: 'ready'; protocol: number; pid: number; accepts?: boolean }
  /** image → bridge: accept and handshake new clients (fds: memfd with the front-door order, then the listening sockets in order). */
  | { op: 'serve'; listeners: number }
  /** bridge → image: its handshake worker is up; it accepts once told to. */
  | { op: 'serving' }
  /** image → bridge: this image has stopped accepting; accept from now on, numbering connections from `firstId`. */
  | { op: 'accept'; firstId: number }
  /** image → bridge: stop accepting (handshakes in progress finish and are returned with the connections). */
  | { op: 'stop-accepting' }
  /** bridge → image: no more accepts; `nextId` is the next connection number free, `counts` its counter increments so far. */
  | { op: 'stopped-accepting'; nextId: number; counts: Record<string, number> }
  /** image → bridge: take these connections (fds: memfd, then client, backend per connection). */
  | { op: 'adopt'; count: number; frozenAt: number; idleTimeoutMs: number }
  /** bridge → image: relaying them now; `stallMs` is how long they were paused. */
  | { op: 'adopted'; count: number; stallMs: number }
  /** image → bridge: hand back up to `max` connections. */
  | { op: 'return'; max: number }
  /** bridge → image: here they are; `more` is false on the last batch (the bridge then exits). */
  | { op: 'returned'; count: number; frozenAt: number; more: boolean; intoBridgeMs: number; counts?: Record<string, number> };

/** What a batch's memfd holds besides the fds: one frame per connection (its fds are the message's, in order). */
interface BatchBody {
  connections: Uint8Array[];
  closed: ClosedElsewhere[];
}

const BATCH_MAGIC = 'IRONSOCKET-BATCH-2\n';

/** A batch memfd's content. It holds the keys of user-mode connections: the caller zeroes it after use. */
export function encodeBatch(pairs: CarriedConnection[], closed: ClosedElsewhere[]): Buffer {
  const connections = pairs.map((p) => encodeConnection({ pair: p.pair, user: p.user }, 'exec'));
  try {
    return encodeTagged(BATCH_MAGIC, { connections, closed } satisfies BatchBody);
  } finally {
    for (const f of connections) f.fill(0);
  }
}

/** Reads a batch memfd's content; the connections' fds are still to be filled in (-1). */
function decodeBatch(raw: Buffer): { pairs: CarriedConnection[]; closed: ClosedElsewhere[] } {
  const body = decodeTagged<BatchBody>(BATCH_MAGIC, raw);
  try {
    if (!Array.isArray(body.connections) || !body.connections.every((f) => f instanceof Uint8Array)) throw new Error('batch: no connection frames');
    const pairs = body.connections.map((f, i): CarriedConnection => {
      const frame = decodeConnection(Buffer.from(f.buffer, f.byteOffset, f.byteLength), 'exec', `batch connection ${i + 1}`);
      return { clientFd: -1, backendFd: -1, pair: frame.pair, ...(frame.user ? { user: frame.user } : {}) };
    });
    return { pairs, closed: body.closed ?? [] };
  } finally {
    if (Array.isArray(body.connections)) for (const f of body.connections) if (f instanceof Uint8Array) f.fill(0);
  }
}

/** A `serve` order as it arrived: its memfd's content (holds private keys: the receiver wipes it) and the listening sockets. */
export interface ServeOrder {
  raw: Buffer;
  listenerFds: number[];
}

export type LinkEvent =
  | { kind: 'message'; header: LinkHeader; pairs: CarriedConnection[]; closed: ClosedElsewhere[]; serve?: ServeOrder }
  | { kind: 'again' }
  | { kind: 'closed'; reason: string };

export class Link {
  private readonly channel: FdChannel;

  constructor(readonly fd: number) {
    this.channel = new FdChannel(fd);
  }

  /** Sends a header alone; returns an error message, or undefined once sent. */
  send(header: LinkHeader): string | undefined {
    const r = this.channel.send(Buffer.from(JSON.stringify(header)));
    return r < 0 ? `bridge link: ${errnoName(-r)}` : undefined;
  }

  /**
   * Sends a header with connections: their state in a memfd, their fds alongside. On success the
   * fds are in flight (the caller closes its copies); on failure they are still the caller's.
   */
  sendBatch(header: LinkHeader, pairs: CarriedConnection[], closed: ClosedElsewhere[] = []): string | undefined {
    let encoded: Buffer | undefined;
    let memfd: number;
    try {
      encoded = encodeBatch(pairs, closed);
      memfd = writeStateMemfd(encoded);
    } catch (e) {
      return (e as Error).message;
    } finally {
      encoded?.fill(0);
    }
    try {
      const fds = [memfd, ...pairs.flatMap((p) => [p.clientFd, p.backendFd])];
      const r = this.channel.send(Buffer.from(JSON.stringify(header)), fds);
      return r < 0 ? `bridge link: ${errnoName(-r)}` : undefined;
    } finally {
      sys.close(memfd);
    }
  }

  /**
   * Sends a `serve` order: `encoded` in a sealed memfd, the listening sockets alongside (still the caller's:
   * the bridge gets duplicates). Returns an error message, or undefined once sent.
   */
  sendServe(encoded: Buffer, listenerFds: number[]): string | undefined {
    let memfd: number;
    try {
      memfd = writeStateMemfd(encoded);
    } catch (e) {
      return (e as Error).message;
    }
    try {
      const r = this.channel.send(Buffer.from(JSON.stringify({ op: 'serve', listeners: listenerFds.length } satisfies LinkHeader)), [memfd, ...listenerFds]);
      return r < 0 ? `bridge link: ${errnoName(-r)}` : undefined;
    } finally {
      sys.close(memfd);
    }
  }

  /** Reads one message, never blocking. Connections in it come with the fds that arrived. */
  receive(): LinkEvent {
    const m = this.channel.receive();
    if (m.kind === 'again') return m;
    if (m.kind === 'eof') return { kind: 'closed', reason: 'the other end closed the bridge link' };
    if (m.kind === 'error') return { kind: 'closed', reason: `bridge link: ${errnoName(m.errno)}` };
    let from = 0; // fds before this one are already closed
    const closeAll = (why: string): LinkEvent => {
      for (const fd of m.fds.slice(from)) sys.close(fd);
      return { kind: 'closed', reason: `bridge link: ${why}` };
    };
    let header: LinkHeader;
    try {
      header = JSON.parse(m.data.toString('utf8')) as LinkHeader;
    } catch {
      return closeAll('unreadable message');
    }
    if (header.op === 'serve') {
      if (m.fds.length !== 1 + header.listeners) return closeAll(`"serve" of ${header.listeners} listener(s) came with ${m.fds.length} descriptor(s)`);
      try {
        const raw = readStateMemfd(m.fds[0]!); // closes the memfd
        return { kind: 'message', header, pairs: [], closed: [], serve: { raw, listenerFds: m.fds.slice(1) } };
      } catch (e) {
        return closeAll((e as Error).message);
      }
    }
    if (header.op !== 'adopt' && header.op !== 'returned') {
      return m.fds.length ? closeAll(`unexpected descriptors with "${String(header.op)}"`) : { kind: 'message', header, pairs: [], closed: [] };
    }
    if (m.fds.length !== 1 + 2 * header.count) return closeAll(`"${header.op}" of ${header.count} connection(s) came with ${m.fds.length} descriptor(s)`);
    let body: { pairs: CarriedConnection[]; closed: ClosedElsewhere[] };
    let raw: Buffer | undefined;
    try {
      raw = readStateMemfd(m.fds[0]!); // closes the memfd
      from = 1;
      body = decodeBatch(raw);
    } catch (e) {
      return closeAll((e as Error).message);
    } finally {
      raw?.fill(0);
    }
    if (body.pairs.length !== header.count) return closeAll(`batch holds ${body.pairs.length} connection(s), header says ${header.count}`);
    body.pairs.forEach((p, i) => {
      p.clientFd = m.fds[1 + 2 * i]!;
      p.backendFd = m.fds[2 + 2 * i]!;
    });
    return { kind: 'message', header, pairs: body.pairs, closed: body.closed };
  }
}
