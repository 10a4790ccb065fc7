// Closing a client after our fatal alert without an RST that could destroy the alert: FIN first, then close on its FIN or after a bound.
import { SHUT_WR, sys } from '../kernel/libc.js';
import { EPOLLRDHUP } from '../kernel/poller.js';

/** How long a client gets to read our alert and close. */
export const LINGER_MS = 2000;
/** Sockets lingering at once per relay thread; past it the oldest is closed at once. */
export const MAX_LINGERING = 256;

export interface LingerHost {
  watch(fd: number, onEvents: (events: number) => void, events: number): void;
  unwatch(fd: number): void;
}

/**
 * Closing a socket whose receive queue holds unread bytes makes the kernel send RST, and an RST can reach
 * the client before it has read our alert (a client still sending a long record, say). So the socket is
 * shut for writing (the alert, then FIN) and closed once the client's FIN arrives (EPOLLRDHUP), or after
 * LINGER_MS. Nothing is read meanwhile: what the client still sends costs us no CPU (a kTLS socket could
 * not be read anyway once its record layer failed), and once our receive window is full it stops.
 */
export class LingeringCloses {
  private readonly until = new Map<number, number>();

  constructor(private readonly host: LingerHost) {}

  get size(): number {
    return this.until.size;
  }

  /** Takes over `fd` (already out of the pair's epoll interest). */
  add(fd: number, now = Date.now()): void {
    if (this.until.size >= MAX_LINGERING) this.close(this.until.keys().next().value!);
    sys.shutdown(fd, SHUT_WR);
    sys.setCloexec(fd, true); // an in-place upgrade carries connections, not this
    this.until.set(fd, now + LINGER_MS);
    this.host.watch(fd, () => this.close(fd), EPOLLRDHUP);
  }

  /** Closes the sockets whose time is up. */
  tick(now = Date.now()): void {
    for (const [fd, t] of this.until) if (now >= t) this.close(fd);
  }

  closeAll(): void {
    for (const fd of [...this.until.keys()]) this.close(fd);
  }

  private close(fd: number): void {
    if (!this.until.delete(fd)) return;
    this.host.unwatch(fd);
    sys.close(fd);
  }
}
