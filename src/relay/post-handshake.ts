// Records a client sends after the handshake, and its handshake messages there (KeyUpdate, a renegotiation ClientHello) reassembled across records, judged as OpenSSL does.
import { RECORD_ALERT, RECORD_APPLICATION_DATA, RECORD_HANDSHAKE } from '../kernel/ktls.js';
import { ALERT, alertRecord, type ClientRead } from './client-side.js';

const CLIENT_HELLO = 1;
const KEY_UPDATE = 24;
const HEADER = 4;
/** The largest post-handshake message kept while its fragments arrive (a ClientHello with every extension fits). */
export const MAX_POST_HANDSHAKE_MESSAGE = 64 * 1024;

/** What one handshake record asks of the record layer, in order. */
export type PostHandshakeStep =
  /** TLS 1.3 KeyUpdate: install the client's next key; `requested`: answer with ours (update_requested). */
  | { kind: 'key_update'; requested: boolean }
  /** TLS 1.2 ClientHello after the handshake: answer a warning no_renegotiation and go on (RFC 5746 §4.5). */
  | { kind: 'renegotiation' }
  | { kind: 'fatal'; alert: number; reason: string };

const NAMES: Record<number, string> = {
  0: 'HelloRequest',
  1: 'ClientHello (renegotiation)',
  4: 'NewSessionTicket',
  11: 'Certificate',
  15: 'CertificateVerify',
  20: 'Finished',
};

/**
 * Collects handshake records into messages. Messages may span records and records may hold several
 * (RFC 8446 §5.1, RFC 5246 §6.2.1); while one is incomplete only handshake records may follow, and a
 * KeyUpdate must end its record (the key changes right after it).
 */
export class PostHandshakeMessages {
  private partial: Buffer | undefined;

  constructor(
    private readonly version: 'TLSv1.2' | 'TLSv1.3',
    carried?: Uint8Array,
  ) {
    if (carried?.length) this.partial = Buffer.from(carried);
  }

  /** A message is partly received: the next record must be a handshake record. */
  get incomplete(): boolean {
    return this.partial !== undefined;
  }

  /** The partial message, as a copy (an upgrade carries it). */
  snapshot(): Uint8Array | undefined {
    return this.partial ? new Uint8Array(this.partial) : undefined;
  }

  /** What a non-handshake record arriving now means: undefined when it is allowed. */
  interleaved(type: number): PostHandshakeStep | undefined {
    if (!this.partial) return undefined;
    return { kind: 'fatal', alert: ALERT.unexpected_message, reason: `record of type ${type} inside a fragmented handshake message` };
  }

  /** The plaintext of one handshake record (used here, never kept as a view). Empty records are the caller's to judge. */
  feed(fragment: Buffer): PostHandshakeStep[] {
    const p = this.partial ? Buffer.concat([this.partial, fragment]) : fragment;
    this.partial = undefined;
    const steps: PostHandshakeStep[] = [];
    let o = 0;
    while (o < p.length) {
      const left = p.length - o;
      const type = p[o]!;
      if (left >= HEADER) {
        const len = p.readUIntBE(o + 1, 3);
        const verdict = this.judge(type, len);
        if (verdict) return [...steps, verdict];
        if (left < HEADER + len) break;
        const body = p.subarray(o + HEADER, o + HEADER + len);
        o += HEADER + len;
        if (type === KEY_UPDATE) {
          if (body[0]! > 1) return [...steps, { kind: 'fatal', alert: ALERT.illegal_parameter, reason: `KeyUpdate with request_update ${body[0]}` }];
          if (o !== p.length) return [...steps, { kind: 'fatal', alert: ALERT.unexpected_message, reason: 'data after KeyUpdate in the same record' }];
          steps.push({ kind: 'key_update', requested: body[0] === 1 });
        } else {
          steps.push({ kind: 'renegotiation' });
        }
        continue;
      }
      // Fewer than four bytes: the type alone can already be refused.
      const verdict = this.judge(type, undefined);
      if (verdict) return [...steps, verdict];
      break;
    }
    if (o < p.length) this.partial = Buffer.from(p.subarray(o));
    return steps;
  }

  /** A message this side refuses, known from its type and (once read) length; undefined to collect it. */
  private judge(type: number, len: number | undefined): PostHandshakeStep | undefined {
    const allowed = this.version === 'TLSv1.3' ? type === KEY_UPDATE : type === CLIENT_HELLO;
    if (!allowed) {
      return { kind: 'fatal', alert: ALERT.unexpected_message, reason: `unexpected handshake message ${NAMES[type] ?? type} after the handshake` };
    }
    if (len === undefined) return undefined;
    if (type === KEY_UPDATE && len !== 1) return { kind: 'fatal', alert: ALERT.decode_error, reason: `KeyUpdate of ${len} bytes (must be 1)` };
    if (len > MAX_POST_HANDSHAKE_MESSAGE) {
      return { kind: 'fatal', alert: ALERT.unexpected_message, reason: `post-handshake message of ${len} bytes (more than ${MAX_POST_HANDSHAKE_MESSAGE})` };
    }
    return undefined;
  }
}

/**
 * What one record after the handshake means, whoever opened it: 'data' (non-empty application data, to relay),
 * 'handshake' (its messages to feed `messages`), or the answer itself. `p` is its plaintext, used here only.
 */
export function judgeRecord(type: number, p: Buffer, version: 'TLSv1.2' | 'TLSv1.3', messages: PostHandshakeMessages): ClientRead | 'data' | 'handshake' {
  const interleaved = type !== RECORD_HANDSHAKE ? messages.interleaved(type) : undefined;
  if (interleaved?.kind === 'fatal') return interleaved;
  if (type === RECORD_APPLICATION_DATA) return p.length ? 'data' : { kind: 'skip' };
  // TLS 1.3 forbids empty records of any other type (RFC 8446 §5.1); TLS 1.2 servers (OpenSSL) skip them.
  if (p.length === 0) {
    if (version === 'TLSv1.3') return { kind: 'fatal', alert: ALERT.unexpected_message, reason: `empty record of type ${type}` };
    return { kind: 'skip' };
  }
  if (type === RECORD_ALERT) return alertRecord(p, version);
  if (type === RECORD_HANDSHAKE) return 'handshake';
  return { kind: 'fatal', alert: ALERT.unexpected_message, reason: `unexpected record type ${type} after the handshake` };
}
