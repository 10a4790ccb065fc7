// A notify socket that keeps a file descriptor store as systemd does: for `ironsocket keeper` on hosts without systemd, and for the tests that play systemd.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FdChannel } from '../kernel/fdpass.js';
import { AF_UNIX, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, errnoName, sys } from '../kernel/libc.js';
import { encodeUnixSockaddr } from '../kernel/sockaddr.js';

export interface NotifyMessage {
  /** KEY=value lines of the datagram (a later duplicate key wins). */
  fields: Record<string, string>;
  /**
   * Descriptors that came with it (SCM_RIGHTS), open and close-on-exec here. Those of an FDSTORE=1
   * message move into the store instead; this list is then empty.
   */
  fds: number[];
  /** How many descriptors the message carried. */
  fdCount: number;
  /** The datagram as sent. */
  raw: string;
}

/** What a restarted service gets: the stored descriptors, for its fds 3, 4, ..., and the variables naming them. */
export interface HandBack {
  fds: number[];
  env: { LISTEN_FDS: string; LISTEN_FDNAMES: string };
}

/**
 * A non-blocking AF_UNIX datagram socket in a fresh 0700 directory (or, with `abstract`, a fresh
 * abstract name), like the one systemd passes as $NOTIFY_SOCKET. FDSTORE=1 adds a message's
 * descriptors under its FDNAME ("stored" without one); FDSTOREREMOVE=1 closes every descriptor under
 * FDNAME. Unlike systemd it does not drop duplicates, nor watch the descriptors for hangups (as with FDPOLL=0).
 */
export class NotifyStore {
  /** What to put in NOTIFY_SOCKET: a path, or "@name" for an abstract socket. */
  readonly address: string;
  /** The socket: readable when datagrams wait (see receive()). */
  readonly fd: number;
  private readonly channel: FdChannel;
  private readonly dir?: string;
  private readonly store = new Map<string, number[]>();
  private closed = false;

  constructor(opts: { abstract?: boolean; parent?: string } = {}) {
    if (opts.abstract) {
      this.address = `@ironsocket-notify-${process.pid}-${crypto.randomBytes(6).toString('hex')}`;
    } else {
      this.dir = fs.mkdtempSync(path.join(opts.parent ?? os.tmpdir(), 'ironsocket-notify-'));
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
  }

  /** Reads every datagram waiting, applies its store fields, and returns them (oldest first). Throws on a failed recvmsg. */
  receive(): NotifyMessage[] {
    const out: NotifyMessage[] = [];
    if (this.closed) return out;
    for (;;) {
      const r = this.channel.receive();
      if (r.kind === 'again') return out;
      if (r.kind === 'error') throw new Error(`notify socket ${this.address}: recvmsg failed: ${errnoName(r.errno)}`);
      const raw = r.kind === 'message' ? r.data.toString() : '';
      const fds = r.kind === 'message' ? r.fds : [];
      const fields: Record<string, string> = {};
      for (const line of raw.split('\n')) {
        const eq = line.indexOf('=');
        if (eq > 0) fields[line.slice(0, eq)] = line.slice(eq + 1);
      }
      const message: NotifyMessage = { fields, fds, fdCount: fds.length, raw };
      this.keep(message);
      out.push(message);
    }
  }

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

  /** The store's entries: how many descriptors each name holds. */
  entries(): Map<string, number> {
    return new Map([...this.store].map(([name, fds]) => [name, fds.length]));
  }

  /** Every stored descriptor in deposit order, with LISTEN_FDS / LISTEN_FDNAMES naming them. The store keeps its copies. */
  handBack(): HandBack {
    const all = [...this.store].flatMap(([name, fds]) => fds.map((fd) => ({ name, fd })));
    return { fds: all.map((e) => e.fd), env: { LISTEN_FDS: String(all.length), LISTEN_FDNAMES: all.map((e) => e.name).join(':') } };
  }

  /** Closes the socket and every stored descriptor, and removes the directory. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    sys.close(this.fd);
    for (const fds of this.store.values()) for (const fd of fds) sys.close(fd);
    this.store.clear();
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
