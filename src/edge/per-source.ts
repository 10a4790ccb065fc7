// Per-source accounting: how many connections (and how many of them in handshake) each client address holds, so one source cannot fill the proxy.
import { AF_INET, AF_INET6 } from '../kernel/libc.js';
import { encodeSockaddr } from '../kernel/sockaddr.js';
import { parseHostPort } from '../config/schema.js';
import { NOTE_WINDOW_MS, NOTES_UNLIMITED } from '../relay/budget.js';
import type { SourceLimit } from '../core/counters.js';

/** Which per-source limit a connection ran into (a counter suffix and a metric label). */

/** 0 = unlimited. */
export interface SourceLimits {
  connections: number;
  handshakes: number;
}

export interface SourceCount {
  source: string;
  /** Every open connection of the source: in handshake or relayed. */
  connections: number;
  handshakes: number;
}

/**
 * The source a peer address counts against: an IPv4 address as it is (also when it arrives
 * IPv4-mapped on a dual-stack socket), an IPv6 address by its /64 (one host usually owns a whole
 * /64, so counting single addresses would let it open 2^64 "sources"). Undefined when not IP.
 */
export function sourceOf(sockaddr: Buffer): string | undefined {
  if (sockaddr.length < 2) return undefined;
  const family = sockaddr.readUInt16LE(0);
  if (family === AF_INET && sockaddr.length >= 8) return `${sockaddr[4]}.${sockaddr[5]}.${sockaddr[6]}.${sockaddr[7]}`;
  if (family !== AF_INET6 || sockaddr.length < 24) return undefined;
  const a = sockaddr.subarray(8, 24);
  if (a.subarray(0, 10).every((b) => b === 0) && a[10] === 0xff && a[11] === 0xff) return `${a[12]}.${a[13]}.${a[14]}.${a[15]}`;
  const groups = [0, 1, 2, 3].map((i) => a.readUInt16BE(i * 2).toString(16));
  return `${groups.join(':')}::/64`;
}

/** The source of a connection's recorded client ("1.2.3.4:5", "[2001:db8::1]:5"), for connections adopted after an upgrade or crash. */
export function sourceOfClient(client: string): string | undefined {
  const ep = parseHostPort(client, true);
  if ('error' in ep) return undefined;
  // encodeSockaddr cannot take an IPv4-mapped address written with dots (as decodeSockaddr writes one).
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ep.host);
  if (mapped) return mapped[1];
  try {
    return sourceOf(encodeSockaddr(ep));
  } catch {
    return undefined;
  }
}

/**
 * Open connections per source, kept exact over each connection's life: `opened` (in handshake) or
 * `adopted` (already relayed), maybe `established`, then `closed` exactly once. Ids it does not know
 * are ignored, so every close path may call `closed` without double counting.
 */
export class SourceCounts {
  private readonly bySource = new Map<string, { connections: number; handshakes: number }>();
  private readonly byId = new Map<string, { source: string; handshake: boolean }>();

  /** The limit `source` is at (one more connection would exceed it), or undefined. */
  over(source: string, limits: SourceLimits): SourceLimit | undefined {
    const c = this.bySource.get(source);
    if (!c) return undefined;
    if (limits.connections > 0 && c.connections >= limits.connections) return 'connections';
    if (limits.handshakes > 0 && c.handshakes >= limits.handshakes) return 'handshakes';
    return undefined;
  }

  opened(id: string, source: string): void {
    this.add(id, source, true);
  }

  adopted(id: string, source: string): void {
    this.add(id, source, false);
  }

  established(id: string): void {
    const e = this.byId.get(id);
    if (!e || !e.handshake) return;
    e.handshake = false;
    this.bySource.get(e.source)!.handshakes--;
  }

  closed(id: string): void {
    const e = this.byId.get(id);
    if (!e) return;
    this.byId.delete(id);
    const c = this.bySource.get(e.source)!;
    c.connections--;
    if (e.handshake) c.handshakes--;
    if (c.connections === 0) this.bySource.delete(e.source);
  }

  count(source: string): SourceCount {
    const c = this.bySource.get(source);
    return { source, connections: c?.connections ?? 0, handshakes: c?.handshakes ?? 0 };
  }

  /** Sources with at least one open connection. */
  get sources(): number {
    return this.bySource.size;
  }

  /** The `n` sources with the most open connections. */
  busiest(n: number): SourceCount[] {
    return [...this.bySource.entries()]
      .map(([source, c]) => ({ source, ...c }))
      .sort((x, y) => y.connections - x.connections || y.handshakes - x.handshakes)
      .slice(0, n);
  }

  private add(id: string, source: string, handshake: boolean): void {
    if (this.byId.has(id)) return;
    this.byId.set(id, { source, handshake });
    const c = this.bySource.get(source) ?? { connections: 0, handshakes: 0 };
    c.connections++;
    if (handshake) c.handshakes++;
    this.bySource.set(source, c);
  }
}

/**
 * Log lines about rejected connections, for one limit: the first NOTES_UNLIMITED of each NOTE_WINDOW_MS,
 * then, at the window's end, one line saying how many were left out and the last of them. A flood
 * of any size, from any number of sources, makes at most NOTES_UNLIMITED + 1 lines per window.
 */
export class RejectionNotes {
  private windowStart = -Infinity;
  private inWindow = 0;
  private held = 0;
  private lastHeld = '';
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly emit: (line: string) => void) {}

  note(line: string, now = Date.now()): void {
    if (now - this.windowStart >= NOTE_WINDOW_MS) {
      this.windowStart = now;
      this.inWindow = 0;
    }
    if (this.inWindow < NOTES_UNLIMITED) {
      this.inWindow++;
      this.emit(line);
      return;
    }
    this.held++;
    this.lastHeld = line;
    this.timer ??= setTimeout(() => this.flush(), this.windowStart + NOTE_WINDOW_MS - now).unref();
  }

  private flush(): void {
    this.timer = undefined;
    if (this.held === 0) return;
    this.emit(`${this.held} more rejection(s) in the last ${NOTE_WINDOW_MS / 1000} s not logged one by one; the last: ${this.lastHeld}`);
    this.held = 0;
  }
}
