// Reads the hello randoms out of plaintext handshake records (TLS 1.2 key expansion needs server_random).

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
