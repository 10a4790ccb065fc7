// The client side of a relayed connection whose TLS state lives in the kernel: plaintext in, plaintext out, control records by cmsg.
import { EAGAIN, EINTR, E, SOL_SOCKET, SO_ERROR, errnoName, sys } from '../kernel/libc.js';
import { RECORD_ALERT, type TlsRecordIo } from '../kernel/ktls.js';
import { ALERT, type ClientRead, type ClientSide } from './client-side.js';
import { PostHandshakeMessages, judgeRecord } from './post-handshake.js';

const EBADMSG = E.EBADMSG!;
const EMSGSIZE = E.EMSGSIZE!;
const EKEYEXPIRED = E.EKEYEXPIRED!;

export class KernelClient implements ClientSide {
  private readonly handshake: PostHandshakeMessages;
  /** A reply record (type, payload) the socket would not take yet; reading waits until it has gone. */
  private reply: { type: number; payload: Buffer } | undefined;
  /** splice() just said 0: EOF, or it consumed an empty data record (the read() that follows tells which). */
  private spliceSawZero = false;

  constructor(
    readonly fd: number,
    private readonly io: TlsRecordIo,
    private readonly version: 'TLSv1.2' | 'TLSv1.3',
  ) {
    this.handshake = new PostHandshakeMessages(version);
  }

  readonly splices = true;
  readonly bufferedInput = false;

  get pendingOutput(): boolean {
    return this.reply !== undefined;
  }

  get inputPaused(): boolean {
    return this.reply !== undefined;
  }

  spliceIn(pipeW: number, len: number): number | 'control' | ClientRead {
    // Inside a fragmented handshake message every record must be seen: data there is a protocol error.
    if (this.handshake.incomplete) return 'control';
    const r = sys.splice(this.fd, pipeW, len);
    if (r > 0) return r;
    if (r === 0) {
      // An empty data record spliced is 0 bytes too: read() looks again (recvmsg tells EOF from a record).
      this.spliceSawZero = true;
      return 'control';
    }
    if (r === -EAGAIN || r === -EINTR) return { kind: 'again' };
    // kTLS splices application data only: at any other record type it says EINVAL.
    if (r === -E.EINVAL!) return 'control';
    return this.failure(-r);
  }

  private failure(e: number): ClientRead {
    // The kernel says EBADMSG for every record it cannot open: a forged tag, one shorter than its tag,
    // a TLS 1.3 record with a plaintext outer type (ChangeCipherSpec) or an all-zero inner plaintext.
    if (e === EBADMSG) return { kind: 'fatal', alert: ALERT.bad_record_mac, reason: 'record failed authentication (EBADMSG)' };
    if (e === EMSGSIZE) return { kind: 'fatal', alert: ALERT.record_overflow, reason: 'record longer than 2^14 + 256 bytes (EMSGSIZE)' };
    if (e === EKEYEXPIRED) return { kind: 'fatal', alert: ALERT.internal_error, reason: 'client KeyUpdate: kernel paused RX for a new key' };
    if (e === E.EINVAL) return { kind: 'fatal', alert: ALERT.decode_error, reason: 'record with a wrong TLS version (EINVAL)' };
    return { kind: 'fatal', reason: `read from client: ${errnoName(e)}` };
  }

  read(buf: Buffer): ClientRead {
    const afterZeroSplice = this.spliceSawZero;
    this.spliceSawZero = false;
    const r = this.io.recv(this.fd, buf, buf.length);
    // Nothing to read right after splice said 0: it was an empty record it consumed, not EOF (EOF reads 0 again).
    if ((r === -EAGAIN || r === -EINTR) && afterZeroSplice) return { kind: 'skip' };
    if (r === -EAGAIN || r === -EINTR) return { kind: 'again' };
    if (r < 0) return this.failure(-r);
    if (r === 0 && !this.io.recordTypeDelivered) return this.zeroBytes(buf);
    return this.record(this.io.recordType, buf.subarray(0, r));
  }

  /**
   * recvmsg gave 0 bytes and named no record type: EOF, or an empty record all the same. At EOF the
   * next read says 0 again; after an empty record it says EAGAIN (or reads what follows).
   */
  private zeroBytes(buf: Buffer): ClientRead {
    const r = this.io.recv(this.fd, buf, buf.length);
    if (r === 0 && !this.io.recordTypeDelivered) return { kind: 'eof' };
    if (r === -EAGAIN || r === -EINTR) return { kind: 'skip' };
    if (r < 0) return this.failure(-r);
    return this.record(this.io.recordType, buf.subarray(0, r));
  }

  /** One record's plaintext (a view into the caller's buffer; empty records included: a zero-byte read with a type is not EOF). */
  private record(type: number, p: Buffer): ClientRead {
    const verdict = judgeRecord(type, p, this.version, this.handshake);
    if (verdict === 'handshake') return this.handshakeMessages(p);
    return verdict === 'data' ? { kind: 'data', n: p.length } : verdict;
  }

  private handshakeMessages(p: Buffer): ClientRead {
    const notes: string[] = [];
    for (const step of this.handshake.feed(p)) {
      if (step.kind === 'fatal') return step;
      if (step.kind === 'key_update') {
        return {
          kind: 'fatal',
          alert: ALERT.internal_error,
          reason: 'client sent KeyUpdate; this kernel cannot replace an installed key (needs Linux ≥ 6.13), closing',
        };
      }
      this.sendReply(RECORD_ALERT, Buffer.from([1, ALERT.no_renegotiation]));
      notes.push('client asked to renegotiate: answered no_renegotiation (warning), going on');
    }
    return notes.length ? { kind: 'skip', note: notes.join('; ') } : { kind: 'skip' };
  }

  /** Sends a reply record now, or keeps it (one at most: reading pauses) until the socket takes it. */
  private sendReply(type: number, payload: Buffer): void {
    this.reply = { type, payload };
    this.flush();
  }

  write(buf: Buffer, len: number): number {
    return sys.send(this.fd, buf, len);
  }

  flush(): number {
    if (!this.reply) return 0;
    const r = this.io.sendRecord(this.fd, this.reply.type, this.reply.payload);
    if (r === -EINTR) return this.flush();
    if (r < 0) return r;
    this.reply = undefined;
    return 0;
  }

  wipe(): void {
    // The kernel holds the keys; nothing here.
  }

  closeNotify(): boolean {
    // A reply still owed goes first if the socket takes it; otherwise the close_notify takes its place (the close
    // matters more). A close_notify the socket will not take yet stays owed (pendingOutput: the FIN waits for it).
    this.flush();
    this.reply = { type: RECORD_ALERT, payload: Buffer.from([1, ALERT.close_notify]) };
    const r = this.flush();
    if (r < 0 && r !== -EAGAIN) this.reply = undefined;
    return r === 0;
  }

  /** A reply still owed lives in this object only: an upgrade does not carry it (the image after it sends it again). */
  readonly carriesOutput = false;

  sendAlert(desc: number): void {
    // A failed decryption leaves its error pending on the socket and every send would fail with it;
    // reading SO_ERROR clears it, and the TX state is intact, so the alert can still go out.
    try {
      sys.getsockoptInt(this.fd, SOL_SOCKET, SO_ERROR);
    } catch {
      /* not a socket any more: the send below fails quietly */
    }
    this.io.sendRecord(this.fd, RECORD_ALERT, Buffer.from([2, desc]));
  }
}
