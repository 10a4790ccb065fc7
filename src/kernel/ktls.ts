// Installs TLS session state into a TCP socket (TCP_ULP "tls", TLS_TX/TLS_RX) and speaks TLS control records through it.
import { IPPROTO_TCP, SysError, addressOf, sys } from './libc.js';
import { secretBuffer } from '../record/keys.js';

export const TCP_ULP = 31;
export const SOL_TLS = 282;
export const TLS_TX = 1;
export const TLS_RX = 2;
export const TLS_SET_RECORD_TYPE = 1;
export const TLS_GET_RECORD_TYPE = 2;
export const TLS_1_2_VERSION = 0x0303;
export const TLS_1_3_VERSION = 0x0304;
export const TLS_CIPHER_AES_GCM_128 = 51;
export const TLS_CIPHER_AES_GCM_256 = 52;
export const TLS_CIPHER_CHACHA20_POLY1305 = 54;

export const RECORD_CHANGE_CIPHER_SPEC = 20;
export const RECORD_ALERT = 21;
export const RECORD_HANDSHAKE = 22;
export const RECORD_APPLICATION_DATA = 23;

/** One direction's state, as the kernel wants it. */
export interface KtlsDirection {
  version: typeof TLS_1_2_VERSION | typeof TLS_1_3_VERSION;
  cipher: typeof TLS_CIPHER_AES_GCM_128 | typeof TLS_CIPHER_AES_GCM_256 | typeof TLS_CIPHER_CHACHA20_POLY1305;
  key: Buffer;
  /** The write IV: 12 bytes for TLS 1.3 and ChaCha20, the 4-byte implicit salt for TLS 1.2 AES-GCM. */
  iv: Buffer;
  /** Sequence number of the next record. */
  seq: bigint;
}

/**
 * Builds struct tls12_crypto_info_{aes_gcm_128,aes_gcm_256,chacha20_poly1305}:
 * { u16 version; u16 cipher_type; iv; key; salt; rec_seq[8] }.
 */
export function cryptoInfo(d: KtlsDirection): Buffer {
  const keyLen = d.cipher === TLS_CIPHER_AES_GCM_128 ? 16 : 32;
  if (d.key.length !== keyLen) throw new Error(`kTLS: key is ${d.key.length} bytes, cipher ${d.cipher} needs ${keyLen}`);
  const seq = Buffer.alloc(8);
  seq.writeBigUInt64BE(d.seq);
  let iv: Buffer;
  let salt: Buffer;
  if (d.cipher === TLS_CIPHER_CHACHA20_POLY1305) {
    if (d.iv.length !== 12) throw new Error('kTLS: ChaCha20-Poly1305 needs a 12-byte IV');
    iv = d.iv;
    salt = Buffer.alloc(0);
  } else if (d.version === TLS_1_3_VERSION) {
    if (d.iv.length !== 12) throw new Error('kTLS: TLS 1.3 AES-GCM needs a 12-byte IV');
    salt = d.iv.subarray(0, 4);
    iv = d.iv.subarray(4, 12);
  } else {
    if (d.iv.length !== 4) throw new Error('kTLS: TLS 1.2 AES-GCM needs a 4-byte implicit IV');
    salt = d.iv;
    // The explicit nonce of the next record we send; OpenSSL uses the sequence number, so do we.
    iv = seq;
  }
  const out = secretBuffer(4 + iv.length + keyLen + salt.length + 8);
  out.writeUInt16LE(d.version, 0);
  out.writeUInt16LE(d.cipher, 2);
  let o = 4;
  o += iv.copy(out, o);
  o += d.key.copy(out, o);
  o += salt.copy(out, o);
  seq.copy(out, o);
  return out;
}

/** Sets TCP_ULP "tls" on an ESTABLISHED TCP socket. Throws SysError (ENOENT: no tls module). */
export function enableTlsUlp(fd: number): void {
  const r = sys.setsockopt(fd, IPPROTO_TCP, TCP_ULP, Buffer.from('tls'));
  if (r < 0) throw new SysError('setsockopt(TCP_ULP, "tls")', -r);
}

/** Installs one direction; the crypto_info copy is zeroed before returning. */
export function installDirection(fd: number, dir: 'tx' | 'rx', d: KtlsDirection): void {
  const info = cryptoInfo(d);
  try {
    const r = sys.setsockopt(fd, SOL_TLS, dir === 'tx' ? TLS_TX : TLS_RX, info);
    if (r < 0) throw new SysError(`setsockopt(SOL_TLS, ${dir === 'tx' ? 'TLS_TX' : 'TLS_RX'})`, -r);
  } finally {
    info.fill(0);
  }
}

const CMSG_HDR = 16; // struct cmsghdr on 64-bit Linux: size_t len; int level; int type
const MSGHDR = 56;

/**
 * Reusable recvmsg/sendmsg plumbing with a one-byte SOL_TLS cmsg, allocated once per thread.
 * Not re-entrant: use from a single loop.
 */
export class TlsRecordIo {
  private readonly msg = Buffer.allocUnsafeSlow(MSGHDR);
  private readonly iov = Buffer.allocUnsafeSlow(16);
  private readonly cmsg = Buffer.allocUnsafeSlow(CMSG_HDR + 8);
  private readonly cmsgAddr = addressOf(this.cmsg);
  private readonly iovAddr = addressOf(this.iov);
  /** Record type of the last recvmsg (23 when no cmsg was delivered). */
  recordType = RECORD_APPLICATION_DATA;
  /** Whether the last recvmsg came with a record-type cmsg (a record was read, even an empty one; not so at EOF). */
  recordTypeDelivered = false;

  private prepare(buf: Buffer, len: number, controlLen: number): void {
    this.msg.fill(0);
    this.iov.writeBigUInt64LE(addressOf(buf), 0);
    this.iov.writeBigUInt64LE(BigInt(len), 8);
    this.msg.writeBigUInt64LE(this.iovAddr, 16);
    this.msg.writeBigUInt64LE(1n, 24);
    this.msg.writeBigUInt64LE(this.cmsgAddr, 32);
    this.msg.writeBigUInt64LE(BigInt(controlLen), 40);
  }

  /** recvmsg into buf[0..len); returns bytes or -errno and sets recordType. */
  recv(fd: number, buf: Buffer, len: number): number {
    this.cmsg.fill(0);
    this.prepare(buf, len, this.cmsg.length);
    const r = sys.recvmsg(fd, this.msg, 0x40 /* MSG_DONTWAIT */);
    this.recordType = RECORD_APPLICATION_DATA;
    this.recordTypeDelivered = false;
    if (r >= 0) {
      const controlLen = Number(this.msg.readBigUInt64LE(40));
      if (controlLen >= CMSG_HDR + 1 && this.cmsg.readInt32LE(8) === SOL_TLS && this.cmsg.readInt32LE(12) === TLS_GET_RECORD_TYPE) {
        this.recordType = this.cmsg[CMSG_HDR]!;
        this.recordTypeDelivered = true;
      }
    }
    return r;
  }

  /** Sends one record of the given type (the kernel encrypts it); returns bytes or -errno. */
  sendRecord(fd: number, type: number, payload: Buffer): number {
    this.cmsg.fill(0);
    this.prepare(payload, payload.length, CMSG_HDR + 8);
    this.cmsg.writeBigUInt64LE(BigInt(CMSG_HDR + 1), 0);
    this.cmsg.writeInt32LE(SOL_TLS, 8);
    this.cmsg.writeInt32LE(TLS_SET_RECORD_TYPE, 12);
    this.cmsg[CMSG_HDR] = type;
    return sys.sendmsg(fd, this.msg);
  }
}

/** The session fields installKtls needs (structurally matches handshake/EstablishedSession). */
export interface SessionKeys {
  version: 'TLSv1.2' | 'TLSv1.3';
  suite: { kernelCipherType: number };
  tx: { key: Buffer; iv: Buffer; seq: bigint };
  rx: { key: Buffer; iv: Buffer; seq: bigint };
}

export class KtlsInstallError extends Error {
  /** The errno name of the failed setsockopt (e.g. ENOTCONN), when a system call failed. */
  readonly code: string | undefined;
  constructor(
    readonly step: 'ulp' | 'tx' | 'rx',
    cause: Error,
  ) {
    super(cause.message);
    this.code = cause instanceof SysError ? cause.code : undefined;
  }
}

/** Hands a whole session to the kernel: ULP, then TX, then RX. Throws KtlsInstallError naming the step that failed. */
export function installKtls(fd: number, s: SessionKeys): void {
  const version = s.version === 'TLSv1.3' ? TLS_1_3_VERSION : TLS_1_2_VERSION;
  const cipher = s.suite.kernelCipherType as KtlsDirection['cipher'];
  const step = (name: 'ulp' | 'tx' | 'rx', f: () => void) => {
    try {
      f();
    } catch (e) {
      throw new KtlsInstallError(name, e as Error);
    }
  };
  step('ulp', () => enableTlsUlp(fd));
  step('tx', () => installDirection(fd, 'tx', { version, cipher, ...s.tx }));
  step('rx', () => installDirection(fd, 'rx', { version, cipher, ...s.rx }));
}
