// Turns TLS session secrets (from the key log) into per-direction record keys: RFC 8446 §7 and RFC 5246 §5/§6.3.

import { createHmac } from 'node:crypto';
import type { CipherSuite, HashName } from './suites.js';

export interface TrafficKeys {
  key: Buffer;
  iv: Buffer;
}

export interface DirectionKeys {
  /** Keys for records this side receives. */
  rx: TrafficKeys;
  /** Keys for records this side sends. */
  tx: TrafficKeys;
}

export interface Tls12KeyBlock {
  clientKey: Buffer;
  serverKey: Buffer;
  clientIv: Buffer;
  serverIv: Buffer;
}

/** What the handshake leaves behind, per protocol version. */
export type SessionSecrets =
  | { version: 'TLSv1.3'; clientTrafficSecret: Buffer; serverTrafficSecret: Buffer }
  | { version: 'TLSv1.2'; masterSecret: Buffer; clientRandom: Buffer; serverRandom: Buffer };

const HASH_LEN: Record<HashName, number> = { sha256: 32, sha384: 48 };

/**
 * A zero-filled Buffer for secret bytes, outside V8's heap. `Buffer.alloc(n)` of 64 bytes or fewer lives inside the
 * heap, where the garbage collector copies it as it moves objects, and where handing it to native code (OpenSSL,
 * koffi) moves it out and leaves the old bytes behind: copies `fill(0)` never reaches. An ArrayBuffer never moves.
 */
export function secretBuffer(length: number): Buffer {
  return Buffer.from(new ArrayBuffer(length));
}

/** HKDF-Expand (RFC 5869 §2.3): T(i) = HMAC(PRK, T(i-1) | info | i). */
export function hkdfExpand(hash: HashName, prk: Buffer, info: Buffer, length: number): Buffer {
  const hashLen = HASH_LEN[hash];
  if (!Number.isInteger(length) || length < 0 || length > 255 * hashLen) {
    throw new RangeError(`HKDF-Expand length ${length} out of range for ${hash}`);
  }
  const out = secretBuffer(length);
  let prev: Buffer = Buffer.alloc(0);
  let filled = 0;
  for (let i = 1; filled < length; i++) {
    const h = createHmac(hash, prk);
    h.update(prev);
    h.update(info);
    h.update(Buffer.of(i));
    const t = h.digest();
    prev.fill(0);
    t.copy(out, filled, 0, Math.min(t.length, length - filled));
    filled += t.length;
    prev = t;
  }
  prev.fill(0);
  return out;
}

/**
 * HKDF-Expand-Label (RFC 8446 §7.1). `label` is given without the "tls13 " prefix.
 * HkdfLabel = uint16 length || opaque label<7..255> || opaque context<0..255>.
 */
export function hkdfExpandLabel(hash: HashName, secret: Buffer, label: string, context: Buffer, length: number): Buffer {
  const fullLabel = Buffer.from('tls13 ' + label, 'ascii');
  if (fullLabel.length > 255 || context.length > 255 || length > 0xffff) {
    throw new RangeError('HKDF-Expand-Label argument too long');
  }
  const info = Buffer.alloc(2 + 1 + fullLabel.length + 1 + context.length);
  let o = info.writeUInt16BE(length, 0);
  o = info.writeUInt8(fullLabel.length, o);
  o += fullLabel.copy(info, o);
  o = info.writeUInt8(context.length, o);
  context.copy(info, o);
  return hkdfExpand(hash, secret, info, length);
}

/** TLS 1.3 write key and IV from a traffic secret (RFC 8446 §7.3). */
export function tls13TrafficKeys(suite: CipherSuite, trafficSecret: Buffer): TrafficKeys {
  requireVersion(suite, 'TLSv1.3');
  requireLength(trafficSecret, suite.hashLen, 'traffic secret');
  const empty = Buffer.alloc(0);
  return {
    key: hkdfExpandLabel(suite.hash, trafficSecret, 'key', empty, suite.keyLen),
    iv: hkdfExpandLabel(suite.hash, trafficSecret, 'iv', empty, suite.ivLen),
  };
}

/** application_traffic_secret_N+1 after a KeyUpdate (RFC 8446 §7.2). */
export function tls13NextTrafficSecret(suite: CipherSuite, secret: Buffer): Buffer {
  requireVersion(suite, 'TLSv1.3');
  requireLength(secret, suite.hashLen, 'traffic secret');
  return hkdfExpandLabel(suite.hash, secret, 'traffic upd', Buffer.alloc(0), suite.hashLen);
}

/**
 * TLS 1.2 PRF (RFC 5246 §5): P_hash(secret, label || seed).
 * A(0) = label||seed, A(i) = HMAC(secret, A(i-1)), output = HMAC(secret, A(1)||label||seed) || ...
 */
export function tls12Prf(hash: HashName, secret: Buffer, label: string, seed: Buffer, length: number): Buffer {
  if (!Number.isInteger(length) || length < 0) throw new RangeError(`PRF length ${length} invalid`);
  const labelSeed = Buffer.concat([Buffer.from(label, 'ascii'), seed]);
  const out = secretBuffer(length);
  let a: Buffer = labelSeed;
  let filled = 0;
  while (filled < length) {
    const next = createHmac(hash, secret).update(a).digest();
    if (a !== labelSeed) a.fill(0);
    a = next;
    const block = createHmac(hash, secret).update(a).update(labelSeed).digest();
    block.copy(out, filled, 0, Math.min(block.length, length - filled));
    filled += block.length;
    block.fill(0);
  }
  if (a !== labelSeed) a.fill(0);
  return out;
}

/**
 * TLS 1.2 key block for an AEAD suite (RFC 5246 §6.3; AEAD suites have no MAC keys, RFC 5288 / RFC 7905):
 * PRF(master, "key expansion", server_random || client_random) split into
 * client_write_key, server_write_key, client_write_IV, server_write_IV.
 */
export function tls12KeyBlock(suite: CipherSuite, masterSecret: Buffer, clientRandom: Buffer, serverRandom: Buffer): Tls12KeyBlock {
  requireVersion(suite, 'TLSv1.2');
  requireLength(masterSecret, 48, 'master secret');
  requireLength(clientRandom, 32, 'client random');
  requireLength(serverRandom, 32, 'server random');
  const { keyLen, ivLen } = suite;
  const seed = Buffer.concat([serverRandom, clientRandom]);
  const block = tls12Prf(suite.hash, masterSecret, 'key expansion', seed, 2 * keyLen + 2 * ivLen);
  // Copy out of the block so each key can be wiped independently, then wipe the block.
  const take = (start: number, len: number): Buffer => {
    const b = secretBuffer(len);
    block.copy(b, 0, start, start + len);
    return b;
  };
  const result: Tls12KeyBlock = {
    clientKey: take(0, keyLen),
    serverKey: take(keyLen, keyLen),
    clientIv: take(2 * keyLen, ivLen),
    serverIv: take(2 * keyLen + ivLen, ivLen),
  };
  block.fill(0);
  return result;
}

/**
 * Record keys for one endpoint: `rx` protects what it receives, `tx` what it sends.
 * Iron Socket terminates TLS, so `side` defaults to 'server' (rx = client write keys).
 */
export function deriveDirectionKeys(suite: CipherSuite, secrets: SessionSecrets, side: 'server' | 'client' = 'server'): DirectionKeys {
  if (suite.version !== secrets.version) {
    throw new Error(`suite ${suite.name} is ${suite.version} but secrets are ${secrets.version}`);
  }
  let client: TrafficKeys;
  let server: TrafficKeys;
  if (secrets.version === 'TLSv1.3') {
    client = tls13TrafficKeys(suite, secrets.clientTrafficSecret);
    server = tls13TrafficKeys(suite, secrets.serverTrafficSecret);
  } else {
    const kb = tls12KeyBlock(suite, secrets.masterSecret, secrets.clientRandom, secrets.serverRandom);
    client = { key: kb.clientKey, iv: kb.clientIv };
    server = { key: kb.serverKey, iv: kb.serverIv };
  }
  return side === 'server' ? { rx: client, tx: server } : { rx: server, tx: client };
}

function requireVersion(suite: CipherSuite, version: CipherSuite['version']): void {
  if (suite.version !== version) {
    throw new Error(`${suite.name} is a ${suite.version} suite, expected ${version}`);
  }
}

function requireLength(buf: Buffer, len: number, what: string): void {
  if (buf.length !== len) throw new RangeError(`${what} must be ${len} bytes, got ${buf.length}`);
}
