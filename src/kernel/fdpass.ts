// Passes file descriptors between processes (SCM_RIGHTS over a Unix socket): how live connections move to and from the upgrade bridge.
import { E, SOL_SOCKET, addressOf, sys } from './libc.js';

const SCM_RIGHTS = 1;
const CMSG_HDR = 16; // struct cmsghdr on 64-bit Linux: size_t len; int level; int type
const MSGHDR = 56;
const MSG_CTRUNC = 0x8;
const MSG_TRUNC = 0x20;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;

/** The kernel's limit on descriptors in one SCM_RIGHTS message (SCM_MAX_FD). */
export const MAX_FDS_PER_MESSAGE = 253;

const align8 = (n: number) => (n + 7) & ~7;

export type Received = { kind: 'message'; data: Buffer; fds: number[] } | { kind: 'again' } | { kind: 'eof' } | { kind: 'error'; errno: number };

/** One endpoint's reusable buffers for sendmsg/recvmsg with descriptors (a seqpacket socket keeps message boundaries). */
export class FdChannel {
  private readonly msg = Buffer.allocUnsafeSlow(MSGHDR);
  private readonly iov = Buffer.allocUnsafeSlow(16);
  private readonly cmsg = Buffer.allocUnsafeSlow(CMSG_HDR + align8(4 * MAX_FDS_PER_MESSAGE));
  private readonly inbox = Buffer.allocUnsafeSlow(64 * 1024);

  constructor(readonly fd: number) {}

  private prepare(buf: Buffer, len: number, controlLen: number): void {
    this.msg.fill(0);
    this.iov.writeBigUInt64LE(addressOf(buf), 0);
    this.iov.writeBigUInt64LE(BigInt(len), 8);
    this.msg.writeBigUInt64LE(addressOf(this.iov), 16);
    this.msg.writeBigUInt64LE(1n, 24);
    if (controlLen > 0) {
      this.msg.writeBigUInt64LE(addressOf(this.cmsg), 32);
      this.msg.writeBigUInt64LE(BigInt(controlLen), 40);
    }
  }

  /**
   * Sends `data` (at most 64 KiB) and `fds` as one message without blocking; returns 0 or -errno
   * (-EAGAIN when the peer is not reading). The descriptors stay open here: close them after.
   */
  send(data: Buffer, fds: number[] = []): number {
    if (fds.length > MAX_FDS_PER_MESSAGE) throw new Error(`${fds.length} descriptors in one message (limit ${MAX_FDS_PER_MESSAGE})`);
    if (data.length === 0 || data.length > this.inbox.length) throw new Error(`message of ${data.length} bytes (1..${this.inbox.length})`);
    const body = Buffer.allocUnsafeSlow(data.length);
    data.copy(body);
    const controlLen = fds.length ? CMSG_HDR + align8(4 * fds.length) : 0;
    this.prepare(body, body.length, controlLen);
    if (fds.length) {
      this.cmsg.fill(0, 0, controlLen);
      this.cmsg.writeBigUInt64LE(BigInt(CMSG_HDR + 4 * fds.length), 0);
      this.cmsg.writeInt32LE(SOL_SOCKET, 8);
      this.cmsg.writeInt32LE(SCM_RIGHTS, 12);
      fds.forEach((fd, i) => this.cmsg.writeInt32LE(fd, CMSG_HDR + 4 * i));
    }
    const r = sys.sendmsg(this.fd, this.msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r < 0) return r;
    if (r !== body.length) return -E.EMSGSIZE!;
    return 0;
  }

  /** Receives one message and the descriptors that came with it (close-on-exec), without blocking. */
  receive(): Received {
    this.prepare(this.inbox, this.inbox.length, this.cmsg.length);
    this.cmsg.fill(0);
    const r = sys.recvmsg(this.fd, this.msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (r === -E.EAGAIN! || r === -E.EINTR!) return { kind: 'again' };
    if (r < 0) return { kind: 'error', errno: -r };
    const fds: number[] = [];
    const controlLen = Number(this.msg.readBigUInt64LE(40));
    for (let o = 0; o + CMSG_HDR <= controlLen;) {
      const len = Number(this.cmsg.readBigUInt64LE(o));
      if (len < CMSG_HDR) break;
      if (this.cmsg.readInt32LE(o + 8) === SOL_SOCKET && this.cmsg.readInt32LE(o + 12) === SCM_RIGHTS) {
        for (let i = o + CMSG_HDR; i + 4 <= o + len; i += 4) fds.push(this.cmsg.readInt32LE(i));
      }
      o += align8(len);
    }
    const flags = this.msg.readInt32LE(48);
    if (flags & (MSG_TRUNC | MSG_CTRUNC)) {
      for (const fd of fds) sys.close(fd);
      return { kind: 'error', errno: E.EMSGSIZE! };
    }
    if (r === 0 && fds.length === 0) return { kind: 'eof' };
    return { kind: 'message', data: Buffer.from(this.inbox.subarray(0, r)), fds };
  }
}
