// Test support: a fake systemd notify socket that records every sd_notify datagram, and keeps a file descriptor store as systemd does.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FdChannel } from '../kernel/fdpass.js';
import { AF_UNIX, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, sys } from '../kernel/libc.js';
import { encodeUnixSockaddr } from '../kernel/sockaddr.js';

export interface NotifyMessage {
  /** KEY=value lines of the datagram (a later duplicate key wins). */
  fields: Record<string, string>;
  /**
   * Descriptors that came with it (SCM_RIGHTS), open and close-on-exec here until close(). Those of
   * an FDSTORE=1 message move into the store instead (see stored()); this list is then empty.
   */
  fds: number[];
  /** How many descriptors the message carried. */
  fdCount: number;
  /** The datagram as sent. */
  raw: string;
}

/**
 * Binds a non-blocking AF_UNIX datagram socket, like the one systemd passes as $NOTIFY_SOCKET.
 * Give `address` to the process under test as NOTIFY_SOCKET (a child inherits it through env).
 */
export class FakeNotifySocket {
  /** What to put in NOTIFY_SOCKET: a path, or "@name" for an abstract socket. */
  readonly address: string;
  private readonly fd: number;
  private readonly channel: FdChannel;
  private readonly dir?: string;
  private readonly received: NotifyMessage[] = [];
  /** The fd store: descriptors by FDNAME, in the order deposited (systemd's default name is "stored"). */
  private readonly store = new Map<string, number[]>();
  private closed = false;
  private failure?: Error;
  /** Reads in the background too: a sender blocks once 10 datagrams (net.unix.max_dgram_qlen) wait unread. */
  private readonly timer: NodeJS.Timeout;

  /** A socket at a fresh temporary path, or with `abstract`, a fresh name in the abstract namespace. */
  constructor(opts: { abstract?: boolean } = {}) {
    if (opts.abstract) {
      this.address = `@ironsocket-test-notify-${process.pid}-${crypto.randomBytes(6).toString('hex')}`;
    } else {
      this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ironsocket-notify-'));
      this.address = path.join(this.dir, 'notify.sock');
    }
    this.fd = sys.socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC);
    try {
      sys.bind(this.fd, encodeUnixSockaddr(this.address));
    } catch (e) {
      sys.close(this.fd);
      if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
      throw e;
    }
    this.channel = new FdChannel(this.fd);
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
    return new Map([...this.store].map(([name, fds]) => [name, fds.length]));
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
  handBack(): { fds: number[]; env: { LISTEN_FDS: string; LISTEN_FDNAMES: string } } {
    this.messages();
    const entries = [...this.store].flatMap(([name, fds]) => fds.map((fd) => ({ name, fd })));
    return {
      fds: entries.map((e) => e.fd),
      env: { LISTEN_FDS: String(entries.length), LISTEN_FDNAMES: entries.map((e) => e.name).join(':') },
    };
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

  /** Closes the socket, every descriptor received with a message, and removes the temporary path. */
  close(): void {
    if (this.closed) return;
    clearInterval(this.timer);
    try {
      this.drain();
    } finally {
      this.closed = true;
      sys.close(this.fd);
      for (const m of this.received) for (const fd of m.fds) sys.close(fd);
      for (const fds of this.store.values()) for (const fd of fds) sys.close(fd);
      this.store.clear();
      if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
    }
  }

  private drain(): void {
    if (this.closed) return;
    for (;;) {
      const r = this.channel.receive();
      if (r.kind === 'again') return;
      if (r.kind === 'error') throw new Error(`fake notify socket ${this.address}: recvmsg failed (errno ${r.errno})`);
      const raw = r.kind === 'message' ? r.data.toString() : '';
      const fds = r.kind === 'message' ? r.fds : [];
      const fields: Record<string, string> = {};
      for (const line of raw.split('\n')) {
        const eq = line.indexOf('=');
        if (eq > 0) fields[line.slice(0, eq)] = line.slice(eq + 1);
      }
      const message: NotifyMessage = { fields, fds, fdCount: fds.length, raw };
      this.received.push(message);
      this.keep(message);
    }
  }

  /** FDSTORE=1 adds the message's descriptors under FDNAME; FDSTOREREMOVE=1 closes every one under FDNAME (as systemd does). */
  private keep(m: NotifyMessage): void {
    const name = m.fields.FDNAME ?? 'stored';
    if (m.fields.FDSTORE === '1' && m.fds.length > 0) {
      this.store.set(name, [...(this.store.get(name) ?? []), ...m.fds]);
      m.fds = [];
    }
    if (m.fields.FDSTOREREMOVE === '1') {
      for (const fd of this.store.get(name) ?? []) sys.close(fd);
      this.store.delete(name);
    }
  }
}
