// The bridge link: messages, and batches of live connections with their fds, between an image and the upgrade bridge.
import { FdChannel, MAX_FDS_PER_MESSAGE } from '../kernel/fdpass.js';
import { errnoName, sys } from '../kernel/libc.js';
import type { CarriedConnection, ClosedElsewhere } from '../relay/protocol.js';
import { decodeTagged, encodeTagged } from './codec.js';
import { readStateMemfd, writeStateMemfd } from './state.js';

/**
 * Bumped whenever a message changes: an image and a bridge from different releases must agree. 2: batch
 * memfds (and the hand-off memfd across exec) are sealed, and an unsealed one is refused, so an image of
 * protocol 1 refuses to upgrade in place to this code (restart once instead).
 */
export const LINK_PROTOCOL = 2;

/** Connections per batch: each batch pauses only its own connections, for about one batch's worth of work. */
export const BATCH = 8;

export type LinkHeader =
  /** bridge → image: loaded and listening. */
  | { op: 'ready'; protocol: number; pid: number }
  /** image → bridge: take these connections (fds: memfd, then client, backend per connection). */
  | { op: 'adopt'; count: number; frozenAt: number; idleTimeoutMs: number }
  /** bridge → image: relaying them now; `stallMs` is how long they were paused. */
  | { op: 'adopted'; count: number; stallMs: number }
  /** image → bridge: hand back up to `max` connections. */
  | { op: 'return'; max: number }
  /** bridge → image: here they are; `more` is false on the last batch (the bridge then exits). */
  | { op: 'returned'; count: number; frozenAt: number; more: boolean; intoBridgeMs: number };

/** What a batch's memfd holds besides the fds. */
interface BatchBody {
  pairs: CarriedConnection[];
  closed: ClosedElsewhere[];
}

const BATCH_MAGIC = 'IRONSOCKET-BATCH-1\n';

export type LinkEvent =
  { kind: 'message'; header: LinkHeader; pairs: CarriedConnection[]; closed: ClosedElsewhere[] } | { kind: 'again' } | { kind: 'closed'; reason: string };

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
    const body: BatchBody = { pairs, closed };
    const encoded = encodeTagged(BATCH_MAGIC, body);
    let memfd: number;
    try {
      memfd = writeStateMemfd(encoded);
    } catch (e) {
      return (e as Error).message;
    } finally {
      encoded.fill(0);
    }
    try {
      const fds = [memfd, ...pairs.flatMap((p) => [p.clientFd, p.backendFd])];
      const r = this.channel.send(Buffer.from(JSON.stringify(header)), fds);
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
    if (header.op !== 'adopt' && header.op !== 'returned') {
      return m.fds.length ? closeAll(`unexpected descriptors with "${String(header.op)}"`) : { kind: 'message', header, pairs: [], closed: [] };
    }
    if (m.fds.length !== 1 + 2 * header.count) return closeAll(`"${header.op}" of ${header.count} connection(s) came with ${m.fds.length} descriptor(s)`);
    let body: BatchBody;
    let raw: Buffer | undefined;
    try {
      raw = readStateMemfd(m.fds[0]!); // closes the memfd
      from = 1;
      body = decodeTagged<BatchBody>(BATCH_MAGIC, raw);
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
