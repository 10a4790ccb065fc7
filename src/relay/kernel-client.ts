// The client side of a relayed connection whose TLS state lives in the kernel: plaintext in, plaintext out, control records by cmsg.
import { EAGAIN, EINTR, E, SOL_SOCKET, SO_ERROR, errnoName, sys } from '../kernel/libc.js';
import { RECORD_ALERT, RECORD_APPLICATION_DATA, RECORD_CHANGE_CIPHER_SPEC, RECORD_HANDSHAKE, type TlsRecordIo } from '../kernel/ktls.js';

export const ALERT = {
  close_notify: 0,
  unexpected_message: 10,
  bad_record_mac: 20,
  record_overflow: 22,
  decode_error: 50,
  internal_error: 80,
  user_canceled: 90,
} as const;

/** What one read from the client produced. */
export type ClientRead =
  | { kind: 'data'; n: number }
  | { kind: 'again' }
  | { kind: 'close_notify' }
  /** TCP FIN without close_notify. */
  | { kind: 'eof' }
  /** Handled internally (e.g. a warning alert, a KeyUpdate); read again. `note` is logged. */
  | { kind: 'skip'; note?: string }
  /** Fatal: `alert` (if any) should be sent before closing; `reason` is for the log; `clientAlert`: the client sent one. */
  | { kind: 'fatal'; alert?: number; reason: string; clientAlert?: true };

export interface ClientSide {
  readonly fd: number;
  read(buf: Buffer): ClientRead;
  /** Writes plaintext; returns bytes taken or -errno (-EAGAIN when full). */
  write(buf: Buffer, len: number): number;
  /** Sends (or queues) close_notify; returns false if some of it is still queued. */
  closeNotify(): boolean;
  sendAlert(desc: number): void;
  /** Whether protected bytes are queued inside the client side (userspace records only). */
  readonly pendingOutput: boolean;
  /** Pushes queued bytes: 0 when done, -EAGAIN while full, another -errno on failure. */
  flush(): number;
  /** Zeroes any key material held. */
  wipe(): void;
  /** Whether bytes can move with splice (plaintext in the kernel: kTLS); userspace records cannot. */
  readonly splices: boolean;
  /** Plaintext already read from the socket but not yet handed out: no epoll event will announce it. */
  readonly bufferedInput: boolean;
  /**
   * Splices application data into a pipe: bytes moved, 'control' when a non-data record is next
   * (read() it), or what stopped it. Only when `splices`.
   */
  spliceIn?(pipeW: number, len: number): number | 'control' | ClientRead;
}

const EBADMSG = E.EBADMSG!;
const EMSGSIZE = E.EMSGSIZE!;
const EKEYEXPIRED = E.EKEYEXPIRED!;

export class KernelClient implements ClientSide {
  constructor(
    readonly fd: number,
    private readonly io: TlsRecordIo,
    private readonly version: 'TLSv1.2' | 'TLSv1.3',
  ) {}

  readonly splices = true;
  readonly bufferedInput = false;

  spliceIn(pipeW: number, len: number): number | 'control' | ClientRead {
    const r = sys.splice(this.fd, pipeW, len);
    if (r > 0) return r;
    if (r === 0) return { kind: 'eof' };
    if (r === -EAGAIN || r === -EINTR) return { kind: 'again' };
    // kTLS splices application data only: at any other record type it says EINVAL.
    if (r === -E.EINVAL!) return 'control';
    return this.failure(-r);
  }

  private failure(e: number): ClientRead {
    if (e === EBADMSG) return { kind: 'fatal', alert: ALERT.bad_record_mac, reason: 'record failed authentication (EBADMSG)' };
    if (e === EMSGSIZE) return { kind: 'fatal', alert: ALERT.record_overflow, reason: 'record too large (EMSGSIZE)' };
    if (e === EKEYEXPIRED) return { kind: 'fatal', alert: ALERT.internal_error, reason: 'client KeyUpdate: kernel paused RX for a new key' };
    if (e === E.EINVAL) return { kind: 'fatal', alert: ALERT.decode_error, reason: 'record with a wrong TLS version (EINVAL)' };
    return { kind: 'fatal', reason: `read from client: ${errnoName(e)}` };
  }

  read(buf: Buffer): ClientRead {
    const r = this.io.recv(this.fd, buf, buf.length);
    if (r === -EAGAIN || r === -EINTR) return { kind: 'again' };
    if (r < 0) return this.failure(-r);
    if (r === 0) return { kind: 'eof' };
    const type = this.io.recordType;
    if (type === RECORD_APPLICATION_DATA) return { kind: 'data', n: r };
    if (type === RECORD_ALERT) return this.alert(buf, r);
    if (type === RECORD_HANDSHAKE) return this.handshakeMessage(buf, r);
    if (type === RECORD_CHANGE_CIPHER_SPEC) return { kind: 'fatal', alert: ALERT.unexpected_message, reason: 'ChangeCipherSpec after the handshake' };
    return { kind: 'fatal', alert: ALERT.unexpected_message, reason: `unexpected record type ${type}` };
  }

  private alert(buf: Buffer, n: number): ClientRead {
    if (n < 2) return { kind: 'fatal', alert: ALERT.decode_error, reason: 'truncated alert' };
    const level = buf[0]!;
    const desc = buf[1]!;
    if (desc === ALERT.close_notify) return { kind: 'close_notify' };
    if (desc === ALERT.user_canceled) return { kind: 'skip' };
    if (level === 1 && this.version === 'TLSv1.2') return { kind: 'skip' };
    return { kind: 'fatal', reason: `client sent ${level === 2 ? 'fatal' : 'warning'} alert ${desc}`, clientAlert: true };
  }

  private handshakeMessage(buf: Buffer, n: number): ClientRead {
    const msgType = n > 0 ? buf[0]! : -1;
    if (this.version === 'TLSv1.3' && msgType === 24) {
      return {
        kind: 'fatal',
        alert: ALERT.internal_error,
        reason: 'client sent KeyUpdate; this kernel cannot replace an installed key (needs Linux ≥ 6.13), closing',
      };
    }
    const names: Record<number, string> = { 0: 'HelloRequest', 1: 'ClientHello (renegotiation)', 4: 'NewSessionTicket' };
    return { kind: 'fatal', alert: ALERT.unexpected_message, reason: `unexpected handshake message ${names[msgType] ?? msgType} after the handshake` };
  }

  write(buf: Buffer, len: number): number {
    return sys.send(this.fd, buf, len);
  }

  readonly pendingOutput = false;

  flush(): number {
    return 0;
  }

  wipe(): void {
    // The kernel holds the keys; nothing here.
  }

  closeNotify(): boolean {
    const r = this.io.sendRecord(this.fd, RECORD_ALERT, Buffer.from([1, ALERT.close_notify]));
    return r >= 0;
  }

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
