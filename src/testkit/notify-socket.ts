// Test support: a fake systemd notify socket that records every sd_notify datagram, and keeps a file descriptor store as systemd does.
import { setTimeout as sleep } from 'node:timers/promises';
import { sys } from '../kernel/libc.js';
import { NotifyStore, type HandBack, type NotifyMessage } from '../service/notify-store.js';

export type { NotifyMessage } from '../service/notify-store.js';

/**
 * A NotifyStore read in the background, recording every message. Give `address` to the process
 * under test as NOTIFY_SOCKET (a child inherits it through env).
 */
export class FakeNotifySocket {
  /** What to put in NOTIFY_SOCKET: a path, or "@name" for an abstract socket. */
  readonly address: string;
  private readonly socket: NotifyStore;
  private readonly received: NotifyMessage[] = [];
  private closed = false;
  private failure?: Error;
  /** Reads in the background too: a sender blocks once 10 datagrams (net.unix.max_dgram_qlen) wait unread. */
  private readonly timer: NodeJS.Timeout;

  /** A socket at a fresh temporary path, or with `abstract`, a fresh name in the abstract namespace. */
  constructor(opts: { abstract?: boolean } = {}) {
    this.socket = new NotifyStore(opts);
    this.address = this.socket.address;
    this.timer = setInterval(() => {
      try {
        this.drain();
      } catch (e) {
        this.failure ??= e as Error;
      }
    }, 10).unref();
  }

  /** The store's entries: how many descriptors each name holds. */
  stored(): Map<string, number> {
    this.messages();
    return this.socket.entries();
  }

  /** Polls until the store satisfies `predicate`; rejects after timeoutMs, listing what it holds. */
  async waitForStore(predicate: (entries: Map<string, number>) => boolean, timeoutMs = 5000): Promise<Map<string, number>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const entries = this.stored();
      if (predicate(entries)) return entries;
      if (Date.now() >= deadline) throw new Error(`fd store did not reach the expected state within ${timeoutMs} ms; it holds ${JSON.stringify([...entries])}`);
      await sleep(10);
    }
  }

  /**
   * What a restarted service gets, as systemd passes it: every stored descriptor (for the child's
   * fds 3, 4, ...: the stdio array from index 3) and LISTEN_FDS / LISTEN_FDNAMES (LISTEN_PID is the
   * child's own pid: set it in a shell that execs, as startProxyProcess does). The store keeps its copies.
   */
  handBack(): HandBack {
    this.messages();
    return this.socket.handBack();
  }

  /** Every datagram received so far, oldest first (reads what is waiting first). */
  messages(): NotifyMessage[] {
    if (this.failure) throw this.failure;
    this.drain();
    return [...this.received];
  }

  /** Polls until a received message satisfies `predicate`, and returns it; rejects after timeoutMs, listing what did arrive. */
  async waitFor(predicate: (m: NotifyMessage) => boolean, timeoutMs = 5000): Promise<NotifyMessage> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.messages().find(predicate);
      if (hit) return hit;
      if (Date.now() >= deadline) {
        const got = this.received.map((m) => JSON.stringify(m.raw)).join(', ') || 'nothing';
        throw new Error(`no matching notification on ${this.address} within ${timeoutMs} ms; received: ${got}`);
      }
      await sleep(10);
    }
  }

  /** Closes the socket, every descriptor received with a message or stored, and removes the temporary path. */
  close(): void {
    if (this.closed) return;
    clearInterval(this.timer);
    try {
      this.drain();
    } finally {
      this.closed = true;
      for (const m of this.received) for (const fd of m.fds) sys.close(fd);
      this.socket.close();
    }
  }

  private drain(): void {
    if (!this.closed) this.received.push(...this.socket.receive());
  }
}
