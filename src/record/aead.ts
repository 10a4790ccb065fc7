// Userspace TLS record protection (one direction, one key) for when the kernel cannot take the session.

import { createCipheriv, createDecipheriv } from 'node:crypto';
import type { AeadName, CipherSuite } from './suites.js';

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
 * key and IV they are given (callers should wipe their own copies); `wipe()` zeroes ours.
 */
export class RecordProtection {
  readonly suite: CipherSuite;
  #key: Buffer;
  #iv: Buffer;
  #seq: bigint;
  #wiped = false;

  constructor(suite: CipherSuite, key: Buffer, iv: Buffer, sequence: bigint = 0n) {
    this.suite = suite;
    checkKeys(suite, key, iv);
    if (sequence < 0n || sequence >= SEQ_LIMIT) throw new RangeError('sequence must be in [0, 2^64)');
    this.#key = Buffer.from(key);
    this.#iv = Buffer.from(iv);
    this.#seq = sequence;
  }

  /** Sequence number the next record will use. */
  get sequence(): bigint {
    return this.#seq;
  }

  /**
   * Decrypt and authenticate one record. `header` is the 5-byte record header as received,
   * `body` the `length` bytes after it. Throws RecordError (sequence unchanged) on failure.
   */
  open(header: Buffer, body: Buffer): OpenedRecord {
    this.#checkUsable();
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
    const explicitLen = this.suite.explicitNonceLen;
    const minBody = explicitLen + TAG_LEN + (tls13 ? 1 : 0);
    if (body.length < minBody) {
      throw new RecordError(Alert.decode_error, `protected record of ${body.length} bytes is too short`);
    }
    if (tls13 && header[0] !== ContentType.application_data) {
      throw new RecordError(Alert.unexpected_message, `protected TLS 1.3 record has outer type ${header[0]}`);
    }

    const seq = this.#seq;
    const ctLen = body.length - explicitLen - TAG_LEN;
    // TLS 1.2: the fragment must fit 2^14; TLS 1.3: TLSInnerPlaintext (content + type + padding) 2^14 + 1.
    if (ctLen > MAX_PLAINTEXT + (tls13 ? 1 : 0)) {
      throw new RecordError(Alert.record_overflow, `plaintext of ${ctLen} bytes exceeds the record limit`);
    }
    const nonce = explicitLen > 0 ? Buffer.concat([this.#iv, body.subarray(0, explicitLen)]) : this.#xorNonce(seq);
    const aad = tls13 ? header : tls12Aad(seq, header[0], header.readUInt16BE(1), ctLen);
    const ciphertext = body.subarray(explicitLen, explicitLen + ctLen);
    const tag = body.subarray(explicitLen + ctLen);

    let inner: Buffer;
    try {
      const d = makeDecipher(this.suite.aead, this.#key, nonce);
      d.setAAD(aad, { plaintextLength: ctLen });
      d.setAuthTag(tag);
      inner = Buffer.concat([d.update(ciphertext), d.final()]);
    } catch {
      throw new RecordError(Alert.bad_record_mac, 'record authentication failed');
    } finally {
      nonce.fill(0);
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
   * Encrypt one record and return it with its 5-byte header. TLS 1.3 records carry outer type 23
   * and `padding` zero bytes after the inner type; TLS 1.2 GCM uses the sequence number as the
   * explicit nonce, as OpenSSL does.
   */
  seal(type: number, plaintext: Buffer, padding = 0): Buffer {
    this.#checkUsable();
    if (!Number.isInteger(type) || type < 0 || type > 255) throw new RangeError(`invalid content type ${type}`);
    if (plaintext.length > MAX_PLAINTEXT) throw new RangeError(`plaintext of ${plaintext.length} bytes exceeds 2^14`);
    const tls13 = this.suite.version === 'TLSv1.3';
    if (!Number.isInteger(padding) || padding < 0 || (!tls13 && padding !== 0)) {
      throw new RangeError('padding is only available for TLS 1.3 and must be a non-negative integer');
    }
    if (tls13 && plaintext.length + 1 + padding > MAX_PLAINTEXT + 1) {
      throw new RangeError('plaintext plus padding exceeds 2^14');
    }
    const seq = this.#seq;
    const explicitLen = this.suite.explicitNonceLen;
    const ptLen = tls13 ? plaintext.length + 1 + padding : plaintext.length;
    const bodyLen = explicitLen + ptLen + TAG_LEN;
    const record = Buffer.alloc(RECORD_HEADER_LEN + bodyLen);
    record[0] = tls13 ? ContentType.application_data : type;
    record.writeUInt16BE(0x0303, 1);
    record.writeUInt16BE(bodyLen, 3);
    const header = record.subarray(0, RECORD_HEADER_LEN);

    let nonce: Buffer;
    if (explicitLen > 0) {
      record.writeBigUInt64BE(seq, RECORD_HEADER_LEN);
      nonce = Buffer.concat([this.#iv, record.subarray(RECORD_HEADER_LEN, RECORD_HEADER_LEN + explicitLen)]);
    } else {
      nonce = this.#xorNonce(seq);
    }
    let input = plaintext;
    if (tls13) {
      input = Buffer.alloc(ptLen);
      plaintext.copy(input);
      input[plaintext.length] = type;
    }
    try {
      const c = makeCipher(this.suite.aead, this.#key, nonce);
      c.setAAD(tls13 ? header : tls12Aad(seq, type, 0x0303, ptLen), { plaintextLength: ptLen });
      let o = RECORD_HEADER_LEN + explicitLen;
      o += c.update(input).copy(record, o);
      o += c.final().copy(record, o);
      c.getAuthTag().copy(record, o);
    } finally {
      nonce.fill(0);
      if (input !== plaintext) input.fill(0);
    }
    this.#seq = seq + 1n;
    return record;
  }

  /** Switch to new keys (TLS 1.3 KeyUpdate); the sequence restarts at 0. */
  rekey(newKey: Buffer, newIv: Buffer): void {
    checkKeys(this.suite, newKey, newIv);
    this.#key.fill(0);
    this.#iv.fill(0);
    this.#key = Buffer.from(newKey);
    this.#iv = Buffer.from(newIv);
    this.#seq = 0n;
    this.#wiped = false;
  }

  /** Copies of the current key, IV and sequence number, for carrying the state across exec. Wipe them after use. */
  exportState(): { key: Buffer; iv: Buffer; seq: bigint } {
    if (this.#wiped) throw new Error('record protection was wiped');
    return { key: Buffer.from(this.#key), iv: Buffer.from(this.#iv), seq: this.#seq };
  }

  /** Zero the key and IV; the object is unusable afterwards (until `rekey`). */
  wipe(): void {
    this.#key.fill(0);
    this.#iv.fill(0);
    this.#wiped = true;
  }

  #checkUsable(): void {
    if (this.#wiped) throw new Error('RecordProtection used after wipe()');
    if (this.#seq >= SEQ_LIMIT) {
      throw new RecordError(Alert.internal_error, 'sequence number space exhausted; rekey or close');
    }
  }

  /** Per-record nonce: the 64-bit sequence, left-padded to the IV length, XOR the IV. */
  #xorNonce(seq: bigint): Buffer {
    const nonce = Buffer.from(this.#iv);
    const off = nonce.length - 8;
    const s = Buffer.alloc(8);
    s.writeBigUInt64BE(seq);
    for (let i = 0; i < 8; i++) nonce[off + i] ^= s[i];
    return nonce;
  }
}

/** TLS 1.2 AEAD additional data: seq_num(8) || type(1) || version(2) || length(2). */
function tls12Aad(seq: bigint, type: number, version: number, length: number): Buffer {
  const aad = Buffer.alloc(13);
  aad.writeBigUInt64BE(seq, 0);
  aad.writeUInt8(type, 8);
  aad.writeUInt16BE(version, 9);
  aad.writeUInt16BE(length, 11);
  return aad;
}

// Separate branches so each createCipheriv call resolves to its typed AEAD overload.
function makeCipher(aead: AeadName, key: Buffer, nonce: Buffer) {
  const opts = { authTagLength: TAG_LEN };
  return aead === 'chacha20-poly1305' ? createCipheriv(aead, key, nonce, opts) : createCipheriv(aead, key, nonce, opts);
}

function makeDecipher(aead: AeadName, key: Buffer, nonce: Buffer) {
  const opts = { authTagLength: TAG_LEN };
  return aead === 'chacha20-poly1305' ? createDecipheriv(aead, key, nonce, opts) : createDecipheriv(aead, key, nonce, opts);
}

function checkKeys(suite: CipherSuite, key: Buffer, iv: Buffer): void {
  if (key.length !== suite.keyLen) throw new RangeError(`${suite.name} key must be ${suite.keyLen} bytes`);
  if (iv.length !== suite.ivLen) throw new RangeError(`${suite.name} iv must be ${suite.ivLen} bytes`);
}
