// Test support: a fake systemd notify socket that records every sd_notify datagram (and the descriptors sent with it).
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
  /** Descriptors that came with it (SCM_RIGHTS), open and close-on-exec here until close(). */
  fds: number[];
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
    }, 20).unref();
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
      this.received.push({ fields, fds, raw });
    }
  }
}
