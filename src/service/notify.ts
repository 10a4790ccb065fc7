// Tells systemd how the proxy is doing (the sd_notify protocol: READY, RELOADING, STOPPING, STATUS, MAINPID) and hands it descriptors to keep (FDSTORE=1).
import {
  AF_UNIX,
  CLOCK_MONOTONIC,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOL_SOCKET,
  SO_SNDTIMEO,
  addressOf,
  errnoName,
  sys,
} from '../kernel/libc.js';
import { MAX_FDS_PER_MESSAGE } from '../kernel/fdpass.js';
import { encodeUnixSockaddr } from '../kernel/sockaddr.js';

/** systemd reads each notification into a PIPE_BUF-sized buffer and drops a longer datagram whole. */
export const MAX_NOTIFY_BYTES = 4096;

/** How long one notification may block on a manager that is not reading (a full datagram queue). */
const SEND_TIMEOUT_MS = 2000;

const SCM_RIGHTS = 1;
const CMSG_HDR = 16; // struct cmsghdr on 64-bit Linux: size_t len; int level; int type
const MSGHDR = 56; // struct msghdr on 64-bit Linux
const align8 = (n: number) => (n + 7) & ~7;

/**
 * sendmsg's buffers, made once: allocUnsafeSlow memory never moves and, held here, is never
 * collected while the kernel reads it through the addresses in the msghdr.
 */
const io = (() => {
  const body = Buffer.allocUnsafeSlow(MAX_NOTIFY_BYTES);
  const iov = Buffer.allocUnsafeSlow(16).fill(0);
  const msg = Buffer.allocUnsafeSlow(MSGHDR).fill(0);
  const cmsg = Buffer.allocUnsafeSlow(CMSG_HDR + align8(4 * MAX_FDS_PER_MESSAGE));
  iov.writeBigUInt64LE(addressOf(body), 0);
  msg.writeBigUInt64LE(addressOf(iov), 16); // msg_iov (msg_name stays NULL: the socket is connected)
  msg.writeBigUInt64LE(1n, 24); // msg_iovlen
  return { body, iov, msg, cmsg };
})();

export type NotifyFields = Record<string, string | number | bigint>;

/** A notification that could not be delivered: names the socket and the errno. */
export class NotifyError extends Error {
  readonly socket: string;
  readonly errno: number;
  readonly code: string;
  constructor(socket: string, call: string, errno: number) {
    const code = errnoName(errno);
    super(`sd_notify to NOTIFY_SOCKET=${socket} failed: ${call}: ${code} (errno ${errno})`);
    this.name = 'NotifyError';
    this.socket = socket;
    this.errno = errno;
    this.code = code;
  }
}

/** CLOCK_MONOTONIC in microseconds, the clock MONOTONIC_USEC= is read against. */
export function monotonicUsec(): bigint {
  return sys.clockNs(CLOCK_MONOTONIC) / 1000n;
}

/** Encodes fields as the newline-separated KEY=value block sd_notify sends; throws on a key or value that would corrupt it. */
export function encodeNotification(fields: NotifyFields): Buffer {
  const lines: string[] = [];
  for (const [key, raw] of Object.entries(fields)) {
    if (!/^[A-Z_][A-Z0-9_]*$/.test(key)) throw new Error(`sd_notify: invalid field name ${JSON.stringify(key)} (want A-Z, 0-9, _)`);
    if (typeof raw === 'number' && !Number.isFinite(raw)) throw new Error(`sd_notify: ${key} is not a finite number: ${raw}`);
    const value = String(raw);
    if (value.includes('\n')) throw new Error(`sd_notify: the value of ${key} contains a newline, which would end the field early`);
    if (value.includes('\0')) throw new Error(`sd_notify: the value of ${key} contains a NUL byte`);
    lines.push(`${key}=${value}`);
  }
  if (lines.length === 0) throw new Error('sd_notify: no fields to send');
  const data = Buffer.from(lines.join('\n') + '\n');
  if (data.length > MAX_NOTIFY_BYTES) throw new Error(`sd_notify: message of ${data.length} bytes, over systemd's ${MAX_NOTIFY_BYTES}`);
  return data;
}

/**
 * Speaks to the service manager at $NOTIFY_SOCKET: a filesystem path, or "@name" in the abstract
 * namespace. Each notification is one datagram from a fresh AF_UNIX socket (close-on-exec), so
 * nothing stays open between calls, nor across the proxy's exec.
 *
 * NOTIFY_SOCKET is deliberately left in the environment (sd_notify's unset_environment = 0): the
 * proxy upgrades by exec'ing itself with the same PID, and the new image must keep notifying
 * (READY=1 after an upgrade, STOPPING=1 at the end). Child processes it starts (the upgrade bridge,
 * pre-flight checks) inherit the variable too; with NotifyAccess=main systemd ignores anything
 * they might send, and they send nothing.
 */
export class SystemdNotifier {
  private readonly addr: Buffer;

  constructor(readonly socket: string) {
    if (!socket.startsWith('/') && !socket.startsWith('@')) {
      throw new Error(`NOTIFY_SOCKET=${socket}: only an absolute path or an @abstract name is supported`);
    }
    this.addr = encodeUnixSockaddr(socket);
  }

  /** The notifier for $NOTIFY_SOCKET, or undefined when the variable is unset or empty (not started by systemd). */
  static fromEnv(env: NodeJS.ProcessEnv = process.env): SystemdNotifier | undefined {
    const socket = env.NOTIFY_SOCKET;
    return socket ? new SystemdNotifier(socket) : undefined;
  }

  /**
   * Sends one notification; with `fds`, they travel along as SCM_RIGHTS (for FDSTORE=1) and stay
   * open here. Blocks at most SEND_TIMEOUT_MS when the manager's queue is full, or with `wait: false`
   * not at all (NotifyError with code EAGAIN: try again later). Throws NotifyError.
   */
  notify(fields: NotifyFields, fds: number[] = [], opts: { wait?: boolean } = {}): void {
    const data = encodeNotification(fields);
    if (fds.length > MAX_FDS_PER_MESSAGE) throw new Error(`sd_notify: ${fds.length} descriptors in one message (limit ${MAX_FDS_PER_MESSAGE})`);
    const fd = sys.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC);
    try {
      const tv = Buffer.alloc(16); // struct timeval: time_t tv_sec; suseconds_t tv_usec
      tv.writeBigInt64LE(BigInt(Math.floor(SEND_TIMEOUT_MS / 1000)), 0);
      tv.writeBigInt64LE(BigInt((SEND_TIMEOUT_MS % 1000) * 1000), 8);
      const t = sys.setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, tv);
      if (t < 0) throw new NotifyError(this.socket, 'setsockopt(SO_SNDTIMEO)', -t);
      const c = sys.connect(fd, this.addr);
      if (c < 0) throw new NotifyError(this.socket, 'connect', -c);
      this.send(fd, data, fds, opts.wait === false ? MSG_NOSIGNAL | MSG_DONTWAIT : MSG_NOSIGNAL);
    } finally {
      sys.close(fd);
    }
  }

  private send(fd: number, data: Buffer, fds: number[], flags: number): void {
    data.copy(io.body);
    io.iov.writeBigUInt64LE(BigInt(data.length), 8);
    io.msg.writeBigUInt64LE(0n, 32);
    io.msg.writeBigUInt64LE(0n, 40);
    if (fds.length > 0) {
      const controlLen = CMSG_HDR + align8(4 * fds.length);
      io.cmsg.fill(0, 0, controlLen);
      io.cmsg.writeBigUInt64LE(BigInt(CMSG_HDR + 4 * fds.length), 0);
      io.cmsg.writeInt32LE(SOL_SOCKET, 8);
      io.cmsg.writeInt32LE(SCM_RIGHTS, 12);
      fds.forEach((f, i) => io.cmsg.writeInt32LE(f, CMSG_HDR + 4 * i));
      io.msg.writeBigUInt64LE(addressOf(io.cmsg), 32);
      io.msg.writeBigUInt64LE(BigInt(controlLen), 40);
    }
    const r = sys.sendmsg(fd, io.msg, flags); // blocking (bounded by SO_SNDTIMEO) unless MSG_DONTWAIT
    if (r < 0) throw new NotifyError(this.socket, 'sendmsg', -r);
    if (r !== data.length) throw new Error(`sd_notify to NOTIFY_SOCKET=${this.socket}: sent ${r} of ${data.length} bytes`);
  }

  /** READY=1: start-up (or a reload/upgrade) is complete; STATUS= too when given. */
  ready(status?: string): void {
    this.notify(status === undefined ? { READY: 1 } : { READY: 1, STATUS: status });
  }

  /** RELOADING=1 with MONOTONIC_USEC=, as Type=notify-reload requires; READY=1 must follow when done. */
  reloading(status?: string): void {
    const fields: NotifyFields = { RELOADING: 1, MONOTONIC_USEC: monotonicUsec() };
    if (status !== undefined) fields.STATUS = status;
    this.notify(fields);
  }

  /** STOPPING=1: shutdown has begun. */
  stopping(status?: string): void {
    this.notify(status === undefined ? { STOPPING: 1 } : { STOPPING: 1, STATUS: status });
  }

  /** STATUS=: one line for `systemctl status`. */
  status(text: string): void {
    this.notify({ STATUS: text });
  }

  /** MAINPID=: which process is the service's main process. */
  mainPid(pid: number): void {
    if (!Number.isInteger(pid) || pid <= 0) throw new Error(`sd_notify: MAINPID must be a positive integer, not ${pid}`);
    this.notify({ MAINPID: pid });
  }
}
