// Reads plaintext hello records: the randoms (TLS 1.2 key expansion needs server_random) and the ClientHello's extensions (0-RTT offers).

import { createHash } from 'node:crypto';

export type HelloKind = 'client_hello' | 'server_hello' | 'hello_retry_request';

export interface HelloInfo {
  kind: HelloKind;
  /** legacy_version of the hello message (0x0303 for both TLS 1.2 and 1.3). */
  legacyVersion: number;
  /** The 32-byte random (a copy, not a view into the record). */
  random: Buffer;
}

export class HelloParseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HelloParseError';
  }
}

const CONTENT_HANDSHAKE = 22;
const HS_CLIENT_HELLO = 1;
const HS_SERVER_HELLO = 2;
const RECORD_HEADER_LEN = 5;
const HS_HEADER_LEN = 4;
const RANDOM_OFFSET = HS_HEADER_LEN + 2; // after msg_type(1) length(3) legacy_version(2)
const RANDOM_LEN = 32;

/** RFC 8446 §4.1.3: a HelloRetryRequest is a ServerHello whose random is SHA-256("HelloRetryRequest"). */
export const HELLO_RETRY_REQUEST_RANDOM: Buffer = createHash('sha256').update('HelloRetryRequest').digest();

/**
 * Parse the first handshake message of a plaintext handshake record (5-byte header included).
 * Only the fixed prefix up to the random has to be present, so a ClientHello split over several
 * records still works when given its first record.
 */
export function parseHello(record: Buffer): HelloInfo {
  if (record.length < RECORD_HEADER_LEN) throw new HelloParseError('record shorter than its header');
  if (record[0] !== CONTENT_HANDSHAKE) {
    throw new HelloParseError(`record type ${record[0]} is not handshake (22)`);
  }
  const recordLen = record.readUInt16BE(3);
  const available = Math.min(recordLen, record.length - RECORD_HEADER_LEN);
  if (available < RANDOM_OFFSET + RANDOM_LEN) {
    throw new HelloParseError('record too short to hold a hello random');
  }
  const msg = record.subarray(RECORD_HEADER_LEN, RECORD_HEADER_LEN + available);
  const msgType = msg[0];
  const msgLen = msg.readUIntBE(1, 3);
  if (msgLen < 2 + RANDOM_LEN) throw new HelloParseError(`hello message length ${msgLen} too small`);
  if (msgType !== HS_CLIENT_HELLO && msgType !== HS_SERVER_HELLO) {
    throw new HelloParseError(`handshake type ${msgType} is not ClientHello (1) or ServerHello (2)`);
  }
  const random = Buffer.from(msg.subarray(RANDOM_OFFSET, RANDOM_OFFSET + RANDOM_LEN));
  let kind: HelloKind = msgType === HS_CLIENT_HELLO ? 'client_hello' : 'server_hello';
  if (kind === 'server_hello' && random.equals(HELLO_RETRY_REQUEST_RANDOM)) kind = 'hello_retry_request';
  return { kind, legacyVersion: msg.readUInt16BE(HS_HEADER_LEN), random };
}

/**
 * The ServerHello random from a plaintext ServerHello record (bytes 6..38 of the handshake
 * message). Given a ClientHello record it returns the ClientHello random instead; use
 * `parseHello` to tell them apart.
 */
export function serverRandomFromServerHello(record: Buffer): Buffer {
  return parseHello(record).random;
}

/** RFC 8446 §4.2: the early_data extension, by which a ClientHello announces 0-RTT records. */
export const EXT_EARLY_DATA = 42;
/** OpenSSL refuses a longer ClientHello (CLIENT_HELLO_MAX_LENGTH); nothing past it is gathered. */
const CLIENT_HELLO_MAX = 131_396;

/**
 * The extension types of a ClientHello handshake message (4-byte header included, all of it), in order.
 * Throws HelloParseError when a length field points past its container.
 */
export function clientHelloExtensions(message: Buffer): number[] {
  if (message.length < HS_HEADER_LEN || message[0] !== HS_CLIENT_HELLO) throw new HelloParseError('not a ClientHello message');
  const end = HS_HEADER_LEN + message.readUIntBE(1, 3);
  if (message.length < end) throw new HelloParseError('ClientHello message shorter than its length field');
  let at = RANDOM_OFFSET + RANDOM_LEN;
  const skip = (lenBytes: number, what: string) => {
    if (at + lenBytes > end) throw new HelloParseError(`ClientHello ends inside the ${what} length`);
    const n = message.readUIntBE(at, lenBytes);
    at += lenBytes + n;
    if (at > end) throw new HelloParseError(`ClientHello ${what} runs past the message`);
  };
  skip(1, 'session id');
  skip(2, 'cipher suites');
  skip(1, 'compression methods');
  if (at === end) return []; // no extensions block at all (allowed before TLS 1.3)
  if (at + 2 > end) throw new HelloParseError('ClientHello ends inside the extensions length');
  const extEnd = at + 2 + message.readUInt16BE(at);
  if (extEnd !== end) throw new HelloParseError('ClientHello extensions block does not end with the message');
  at += 2;
  const types: number[] = [];
  while (at < extEnd) {
    if (at + 4 > extEnd) throw new HelloParseError('ClientHello ends inside an extension header');
    types.push(message.readUInt16BE(at));
    at += 4 + message.readUInt16BE(at + 2);
    if (at > extEnd) throw new HelloParseError('ClientHello extension runs past the extensions block');
  }
  return types;
}

/**
 * Gathers the client's first handshake message (the ClientHello) from its leading handshake records, which may
 * split it. `push` each record the client sends, in order; it returns the whole message once, when complete,
 * and undefined before and after (or when the records turn out not to carry a ClientHello).
 */
export class ClientHelloGatherer {
  private parts: Buffer[] = [];
  private have = 0;
  private total = 0; // the message's length once its 4-byte header is in (read once: 1-byte records stay linear)
  private done = false;

  push(record: Buffer): Buffer | undefined {
    if (this.done) return undefined;
    if (record.length < RECORD_HEADER_LEN || record[0] !== CONTENT_HANDSHAKE) return this.stop();
    const body = record.subarray(RECORD_HEADER_LEN, RECORD_HEADER_LEN + record.readUInt16BE(3));
    this.parts.push(Buffer.from(body));
    this.have += body.length;
    if (this.have < HS_HEADER_LEN) return undefined;
    if (this.total === 0) {
      const first = Buffer.concat(this.parts);
      if (first[0] !== HS_CLIENT_HELLO) return this.stop();
      this.total = HS_HEADER_LEN + first.readUIntBE(1, 3);
      if (this.total > CLIENT_HELLO_MAX) return this.stop();
    }
    const total = this.total;
    if (this.have < total) return undefined;
    const message = Buffer.concat(this.parts).subarray(0, total);
    this.stop();
    return message;
  }

  private stop(): undefined {
    this.done = true;
    this.parts = [];
    return undefined;
  }
}

/** Whether a ClientHello message offers 0-RTT early data; a ClientHello that does not parse offers nothing (OpenSSL refuses it). */
export function offersEarlyData(clientHello: Buffer): boolean {
  try {
    return clientHelloExtensions(clientHello).includes(EXT_EARLY_DATA);
  } catch (e) {
    if (e instanceof HelloParseError) return false;
    throw e;
  }
}
