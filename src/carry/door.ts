// The image's side of the bridge's front door: hand it the listening sockets (and keys) while this image execs, and take them back.
import type { HandshakerInit } from '../edge/handshakers.js';
import type { TicketKeySet } from '../handshake/ticket-keys.js';
import { decodeTagged, encodeTagged } from './codec.js';
import { LINK_PROTOCOL, type Link, type LinkEvent, type LinkHeader } from './link.js';

/** What the bridge needs to serve new clients as this image would: its handshake worker's settings, ids, limits. */
export interface DoorOrder {
  /** The handshake worker's settings; `listeners` in the order of the sockets sent with the order, private keys included. */
  handshake: HandshakerInit;
  /**
   * The process's session ticket keys as the image's handshake workers have them now (a copy, wiped with the order):
   * a ticket issued before, during or after the upgrade resumes on either side.
   */
  tickets: TicketKeySet;
  limits: { maxConnections: number; maxConnectionsPerSource: number; maxHandshakesPerSource: number };
}

/** Whether the bridge can accept for these listeners: not for a transparent one (it lacks the capability to connect from the client's address). */
export const servableByBridge = (listeners: readonly { readonly transparent?: boolean }[]): boolean => !listeners.some((l) => l.transparent);

/** The bridge's argument when the image will ask it to accept: it boots its handshake worker at once (nothing secret). */
export const BRIDGE_DOOR_FLAG = '--door';

const ORDER_MAGIC = 'IRONSOCKET-DOOR-1\n';

/** The order as bytes (keys as blobs, never JS strings): the caller wipes the result. */
export const encodeDoorOrder = (o: DoorOrder): Buffer => encodeTagged(ORDER_MAGIC, o);
export const decodeDoorOrder = (raw: Buffer): DoorOrder => decodeTagged<DoorOrder>(ORDER_MAGIC, raw);

/** The next message on `link` (polled: this thread's event loop must keep running), or why there is none by `deadline`. */
async function next(link: Link, deadline: number): Promise<Extract<LinkEvent, { kind: 'message' }> | string> {
  for (;;) {
    const ev = link.receive();
    if (ev.kind === 'message') return ev;
    if (ev.kind === 'closed') return `the upgrade bridge went away (${ev.reason})`;
    if (Date.now() > deadline) return 'the upgrade bridge did not answer in time';
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** A message of the kind wanted, or an error message (anything else but `skip` on the link is a protocol error). */
async function expect<K extends LinkHeader['op']>(
  link: Link,
  op: K,
  deadline: number,
  skip?: LinkHeader['op'],
): Promise<Extract<LinkHeader, { op: K }> | string> {
  for (;;) {
    const ev = await next(link, deadline);
    if (typeof ev === 'string') return ev;
    if (ev.header.op === skip) continue;
    if (ev.header.op !== op) return `unexpected "${ev.header.op}" from the upgrade bridge (waiting for "${op}")`;
    return ev.header as Extract<LinkHeader, { op: K }>;
  }
}

export interface Opened {
  /** Set when the bridge is unusable (gone, or of another link protocol): the upgrade fails. */
  error?: string;
  /** The bridge is ready to accept on the listening sockets (`handOver` then makes it). */
  serving: boolean;
  /** Why it does not, when it could not (logged). */
  why?: string;
}

/**
 * Waits for the bridge's `ready` (up to `readyMs`); if it can accept, sends `order` (from `encode`, called only then,
 * and wiped here) with the listening sockets and waits up to `servingMs` for `serving`. A bridge that does not start
 * serving in time is told to stop, so that accepting is this image's alone again.
 */
export async function openDoor(
  link: Link,
  encode: () => Promise<Buffer | undefined>,
  listenerFds: number[],
  readyMs: number,
  servingMs: number,
): Promise<Opened> {
  const ready = await expect(link, 'ready', Date.now() + readyMs);
  if (typeof ready === 'string') return { error: ready, serving: false };
  if (ready.protocol !== LINK_PROTOCOL)
    return { error: `the bridge on disk speaks link protocol ${ready.protocol}, this image ${LINK_PROTOCOL}`, serving: false };
  if (!ready.accepts) return { serving: false, why: 'the bridge on disk cannot accept' };
  let encoded: Buffer | undefined;
  try {
    encoded = await encode();
    if (!encoded) return { serving: false, why: 'a listener cannot be served from the bridge' };
    const err = link.sendServe(encoded, listenerFds);
    if (err) return { error: err, serving: false };
  } catch (e) {
    return { serving: false, why: (e as Error).message };
  } finally {
    encoded?.fill(0);
  }
  const serving = await expect(link, 'serving', Date.now() + servingMs);
  if (typeof serving !== 'string') return { serving: true };
  const closed = await closeDoor(link, readyMs);
  if (typeof closed === 'string') return { error: closed, serving: false };
  return { serving: false, why: serving };
}

/** Once this image has paused accepting: the bridge accepts from now on, numbering connections from `firstId`. */
export function handOver(link: Link, firstId: number): string | undefined {
  return link.send({ op: 'accept', firstId });
}

/** Stops the bridge accepting; resolves with its next free connection number and counter increments, or why not. */
export async function closeDoor(link: Link, timeoutMs: number): Promise<{ nextId: number; counts: Record<string, number> } | string> {
  const err = link.send({ op: 'stop-accepting' });
  if (err) return err;
  // A `serving` sent just before the bridge read our stop (we had given up waiting for it) is stale.
  const r = await expect(link, 'stopped-accepting', Date.now() + timeoutMs, 'serving');
  return typeof r === 'string' ? r : { nextId: r.nextId, counts: r.counts };
}
