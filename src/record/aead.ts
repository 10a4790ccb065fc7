// Userspace TLS record protection (one direction, one key) for when the kernel cannot take the session.

import { AeadContext } from './evp.js';
import { secretBuffer } from './keys.js';
import type { CipherSuite } from './suites.js';

/** TLS alert descriptions a record-layer failure maps to. */
export const Alert = {
  unexpected_message: 10,
  bad_record_mac: 20,
  record_overflow: 22,
  decode_error: 50,
  internal_error: 80,
} as const;
export type AlertCode = (typeof Alert)[keyof typeof Alert];

export const ContentType = {
  change_cipher_spec: 20,
  alert: 21,
  handshake: 22,
  application_data: 23,
} as const;

/** Largest TLSPlaintext.fragment (RFC 8446 §5.1, RFC 5246 §6.2.1). */
export const MAX_PLAINTEXT = 1 << 14;
/**
 * Largest accepted protected body: 2^14 + 256 (RFC 8446 §5.2). RFC 5246 allows 2^14 + 2048 for
 * TLS 1.2, but an AEAD record there is at most 2^14 + 24, so the tighter bound loses nothing.
 */
export const MAX_CIPHERTEXT = (1 << 14) + 256;
export const RECORD_HEADER_LEN = 5;
/** Largest record `sealInto` can produce, header included: a buffer this long always suffices. */
export const MAX_RECORD = RECORD_HEADER_LEN + MAX_CIPHERTEXT;

const SEQ_LIMIT = 1n << 64n;
const TAG_LEN = 16;

/** A record could not be processed; `alert` is what the peer should be told. */
export class RecordError extends Error {
  readonly alert: AlertCode;
  constructor(alert: AlertCode, message: string) {
    super(message);
    this.name = 'RecordError';
    this.alert = alert;
  }
}

export interface OpenedRecord {
  /** Real content type (the inner type for TLS 1.3). */
  type: number;
  plaintext: Buffer;
}

/**
 * Protects or unprotects records for one direction of one connection. Every successful `open` or
 * `seal` consumes one sequence number; failures consume none. The constructor and `rekey` copy the
 * key and IV they are given (callers should wipe their own copies); `wipe()` zeroes ours and frees
 * the OpenSSL context that holds the key schedule. Every RecordProtection must be wiped once done
 * with; one that is collected without it still has its context freed (a FinalizationRegistry in
 * evp.ts), but later and without zeroing the key copy kept here for `exportState`.
 *
 * One OpenSSL AEAD context serves every record (re-initialised with each record's nonce); the
 * nonce and TLS 1.2 additional data live in per-instance scratch bytes.
 */
export class RecordProtection {
  readonly suite: CipherSuite;
  #key: Buffer;
  #iv: Buffer;
  #seq: bigint;
  /** Undefined once wiped. */
  #aead: AeadContext | undefined;
  /** Per-record nonce at [0, 12) and TLS 1.2 additional data at [16, 29), overwritten every record. */
  readonly #scratch = secretBuffer(32);
  readonly #nonce = this.#scratch.subarray(0, 12);
  readonly #aad12 = this.#scratch.subarray(16, 16 + 13);

  constructor(suite: CipherSuite, key: Buffer, iv: Buffer, sequence: bigint = 0n) {
    this.suite = suite;
    checkKeys(suite, key, iv);
    if (sequence < 0n || sequence >= SEQ_LIMIT) throw new RangeError('sequence must be in [0, 2^64)');
    this.#aead = new AeadContext(suite.aead, key);
    this.#key = Buffer.from(key);
    this.#iv = Buffer.from(iv);
    this.#seq = sequence;
    this.#fixNonce();
  }

  /** Sequence number the next record will use. */
  get sequence(): bigint {
    return this.#seq;
  }

  /**
   * Decrypt and authenticate one record. `header` is the 5-byte record header as received,
   * `body` the `length` bytes after it; neither is modified. The plaintext is a new buffer the
   * caller owns. Throws RecordError (sequence unchanged) on failure.
   */
  open(header: Buffer, body: Buffer): OpenedRecord {
    return this.#open(header, body, false);
  }

  /**
   * `open`, decrypting into `body` itself: no output allocation. The returned plaintext is a VIEW
   * into `body`, valid only as long as the caller does not reuse that buffer (a caller receiving
   * into a shared buffer must copy whatever it keeps past the next receive). A record that fails to
   * authenticate leaves its ciphertext bytes in `body` zeroed (they held unauthenticated plaintext).
   */
  openInPlace(header: Buffer, body: Buffer): OpenedRecord {
    return this.#open(header, body, true);
  }

  #open(header: Buffer, body: Buffer, inPlace: boolean): OpenedRecord {
    const aead = this.#usable();
    if (header.length !== RECORD_HEADER_LEN) {
      throw new RecordError(Alert.decode_error, `record header must be 5 bytes, got ${header.length}`);
    }
    if (header.readUInt16BE(3) !== body.length) {
      throw new RecordError(Alert.decode_error, 'record length field does not match body length');
    }
    if (body.length > MAX_CIPHERTEXT) {
      throw new RecordError(Alert.record_overflow, `protected record of ${body.length} bytes exceeds 2^14+256`);
    }
    const tls13 = this.suite.version === 'TLSv1.3';
    // The outer type first: a plaintext ChangeCipherSpec (one byte) after the handshake is an unexpected
    // message, not a short record (RFC 8446 §5).
    if (tls13 && header[0] !== ContentType.application_data) {
      throw new RecordError(Alert.unexpected_message, `protected TLS 1.3 record has outer type ${header[0]}`);
    }
    const explicitLen = this.suite.explicitNonceLen;
    const minBody = explicitLen + TAG_LEN + (tls13 ? 1 : 0);
    if (body.length < minBody) {
      // Shorter than its nonce and tag it cannot authenticate: bad_record_mac, as OpenSSL answers.
      throw new RecordError(Alert.bad_record_mac, `protected record of ${body.length} bytes is too short to authenticate`);
    }

    const seq = this.#seq;
    const ctLen = body.length - explicitLen - TAG_LEN;
    // TLS 1.2: the fragment must fit 2^14; TLS 1.3: TLSInnerPlaintext (content + type + padding) 2^14 + 1.
    if (ctLen > MAX_PLAINTEXT + (tls13 ? 1 : 0)) {
      throw new RecordError(Alert.record_overflow, `plaintext of ${ctLen} bytes exceeds the record limit`);
    }
    if (explicitLen > 0) body.copy(this.#nonce, 12 - explicitLen, 0, explicitLen);
    else this.#xorNonce(seq);
    const ciphertext = body.subarray(explicitLen, explicitLen + ctLen);
    const inner = inPlace ? ciphertext : Buffer.allocUnsafe(ctLen);

    let authentic: boolean;
    try {
      aead.begin(this.#nonce, false);
      aead.aad(tls13 ? header : this.#tls12Aad(seq, header[0], header.readUInt16BE(1), ctLen));
      aead.update(inner, ciphertext);
      authentic = aead.openFinal(body.subarray(explicitLen + ctLen));
    } catch (e) {
      inner.fill(0);
      throw new RecordError(Alert.internal_error, `record decryption failed in OpenSSL: ${(e as Error).message}`);
    }
    if (!authentic) {
      inner.fill(0);
      throw new RecordError(Alert.bad_record_mac, 'record authentication failed');
    }

    if (!tls13) {
      this.#seq = seq + 1n;
      return { type: header[0], plaintext: inner };
    }
    // TLSInnerPlaintext = content || ContentType || zeros (RFC 8446 §5.2, §5.4).
    let end = inner.length - 1;
    while (end >= 0 && inner[end] === 0) end--;
    if (end < 0) {
      throw new RecordError(Alert.unexpected_message, 'TLS 1.3 record has no non-zero content type');
    }
    this.#seq = seq + 1n;
    return { type: inner[end], plaintext: inner.subarray(0, end) };
  }

  /**
   * Encrypt one record and return it with its 5-byte header, in a new buffer. TLS 1.3 records
   * carry outer type 23 and `padding` zero bytes after the inner type; TLS 1.2 GCM uses the
   * sequence number as the explicit nonce, as OpenSSL does.
   */
  seal(type: number, plaintext: Buffer, padding = 0): Buffer {
    const record = Buffer.allocUnsafe(this.#sealedLength(type, plaintext, padding));
    this.sealInto(type, plaintext, record, padding);
    return record;
  }

  /**
   * `seal`, writing the record at the start of `out` (at least MAX_RECORD bytes always suffice;
   * `plaintext` must not overlap it). Returns the record's length.
   */
  sealInto(type: number, plaintext: Buffer, out: Buffer, padding = 0): number {
    const aead = this.#usable();
    const len = this.#sealedLength(type, plaintext, padding);
    if (out.length < len) throw new RangeError(`record of ${len} bytes does not fit the ${out.length}-byte output`);
    const tls13 = this.suite.version === 'TLSv1.3';
    const seq = this.#seq;
    const explicitLen = this.suite.explicitNonceLen;
    const bodyLen = len - RECORD_HEADER_LEN;
    const ptLen = bodyLen - explicitLen - TAG_LEN;
    out[0] = tls13 ? ContentType.application_data : type;
    out.writeUInt16BE(0x0303, 1);
    out.writeUInt16BE(bodyLen, 3);

    if (explicitLen > 0) {
      out.writeBigUInt64BE(seq, RECORD_HEADER_LEN);
      this.#nonce.writeBigUInt64BE(seq, 12 - explicitLen);
    } else {
      this.#xorNonce(seq);
    }
    let o = RECORD_HEADER_LEN + explicitLen;
    aead.begin(this.#nonce, true);
    aead.aad(tls13 ? out.subarray(0, RECORD_HEADER_LEN) : this.#tls12Aad(seq, type, 0x0303, ptLen));
    aead.update(out.subarray(o, o + plaintext.length), plaintext);
    o += plaintext.length;
    if (tls13) {
      // The rest of TLSInnerPlaintext (type, zero padding) is written in place and encrypted there.
      const trailer = out.subarray(o, o + 1 + padding);
      trailer.fill(0);
      trailer[0] = type;
      aead.update(trailer, trailer);
      o += trailer.length;
    }
    aead.sealFinal(out.subarray(o, o + TAG_LEN));
    this.#seq = seq + 1n;
    return len;
  }

  #sealedLength(type: number, plaintext: Buffer, padding: number): number {
    if (!Number.isInteger(type) || type < 0 || type > 255) throw new RangeError(`invalid content type ${type}`);
    if (plaintext.length > MAX_PLAINTEXT) throw new RangeError(`plaintext of ${plaintext.length} bytes exceeds 2^14`);
    const tls13 = this.suite.version === 'TLSv1.3';
    if (!Number.isInteger(padding) || padding < 0 || (!tls13 && padding !== 0)) {
      throw new RangeError('padding is only available for TLS 1.3 and must be a non-negative integer');
    }
    if (tls13 && plaintext.length + 1 + padding > MAX_PLAINTEXT + 1) {
      throw new RangeError('plaintext plus padding exceeds 2^14');
    }
    const ptLen = tls13 ? plaintext.length + 1 + padding : plaintext.length;
    return RECORD_HEADER_LEN + this.suite.explicitNonceLen + ptLen + TAG_LEN;
  }

  /** Switch to new keys (TLS 1.3 KeyUpdate); the sequence restarts at 0. Also revives a wiped object. */
  rekey(newKey: Buffer, newIv: Buffer): void {
    checkKeys(this.suite, newKey, newIv);
    if (this.#aead) this.#aead.rekey(newKey);
    else this.#aead = new AeadContext(this.suite.aead, newKey);
    this.#key.fill(0);
    this.#iv.fill(0);
    this.#key = Buffer.from(newKey);
    this.#iv = Buffer.from(newIv);
    this.#fixNonce();
    this.#seq = 0n;
  }

  /** Copies of the current key, IV and sequence number, for carrying the state across exec. Wipe them after use. */
  exportState(): { key: Buffer; iv: Buffer; seq: bigint } {
    if (!this.#aead) throw new Error('record protection was wiped');
    return { key: Buffer.from(this.#key), iv: Buffer.from(this.#iv), seq: this.#seq };
  }

  /** Zero the key, IV and nonce and free the OpenSSL context; the object is unusable afterwards (until `rekey`). Idempotent. */
  wipe(): void {
    this.#key.fill(0);
    this.#iv.fill(0);
    this.#scratch.fill(0);
    this.#aead?.free();
    this.#aead = undefined;
  }

  #usable(): AeadContext {
    if (!this.#aead) throw new Error('RecordProtection used after wipe()');
    if (this.#seq >= SEQ_LIMIT) {
      throw new RecordError(Alert.internal_error, 'sequence number space exhausted; rekey or close');
    }
    return this.#aead;
  }

  /** The nonce bytes that do not change per record: TLS 1.2 GCM's 4-byte implicit salt. */
  #fixNonce(): void {
    if (this.suite.explicitNonceLen > 0) this.#iv.copy(this.#nonce, 0);
  }

  /** Per-record nonce: the 64-bit sequence, left-padded to the IV length, XOR the IV. */
  #xorNonce(seq: bigint): void {
    const nonce = this.#nonce;
    const iv = this.#iv;
    nonce.writeUInt32BE(0, 0);
    nonce.writeBigUInt64BE(seq, 4);
    for (let i = 0; i < 12; i++) nonce[i] ^= iv[i];
  }

  /** TLS 1.2 AEAD additional data: seq_num(8) || type(1) || version(2) || length(2). */
  #tls12Aad(seq: bigint, type: number, version: number, length: number): Buffer {
    const aad = this.#aad12;
    aad.writeBigUInt64BE(seq, 0);
    aad[8] = type;
    aad.writeUInt16BE(version, 9);
    aad.writeUInt16BE(length, 11);
    return aad;
  }
}

function checkKeys(suite: CipherSuite, key: Buffer, iv: Buffer): void {
  if (key.length !== suite.keyLen) throw new RangeError(`${suite.name} key must be ${suite.keyLen} bytes`);
  if (iv.length !== suite.ivLen) throw new RangeError(`${suite.name} iv must be ${suite.ivLen} bytes`);
}
