// Collects one connection's session secrets from node:tls `keylog` lines without turning them into strings.
import { secretBuffer } from '../record/keys.js';

/**
 * NSS key log labels we keep (https://firefox-source-docs.mozilla.org/security/nss/legacy/key_log_format/).
 * Other labels (early data, etc.) are accepted and ignored.
 */
const LABELS = {
  CLIENT_RANDOM: 'masterSecret',
  CLIENT_HANDSHAKE_TRAFFIC_SECRET: 'clientHandshakeTrafficSecret',
  SERVER_HANDSHAKE_TRAFFIC_SECRET: 'serverHandshakeTrafficSecret',
  CLIENT_TRAFFIC_SECRET_0: 'clientTrafficSecret0',
  SERVER_TRAFFIC_SECRET_0: 'serverTrafficSecret0',
  EXPORTER_SECRET: 'exporterSecret',
} as const;

type SecretField = (typeof LABELS)[keyof typeof LABELS];

const SP = 0x20;
const LF = 0x0a;
const CR = 0x0d;

export class KeylogError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeylogError';
  }
}

/**
 * Accumulates the secrets Node reports for a single TLS connection (`tlsSocket.on('keylog')` or
 * `server.on('keylog', (line, socket) => ...)` routed per socket).
 *
 * Lines look like `LABEL <client_random hex> <secret hex>\n`. Hex is decoded byte by byte straight
 * into Buffers, and **`add` zero-fills the line Buffer it was given** once parsed (also when the
 * line is rejected), so the caller must not reuse that Buffer. Node hands the *same* Buffer to every
 * `keylog` listener (server-level and socket-level alike), so listeners that run after `add` see
 * zeros: register the collector last, or give it the only listener. Getters return the collector's own
 * Buffers (no copies); `wipe()` zero-fills every one of them, including ones a caller still holds.
 */
export class KeylogCollector {
  #clientRandom: Buffer | undefined;
  #secrets: Partial<Record<SecretField, Buffer>> = {};

  /** Parse one key log line (trailing newline optional) and zero the line. */
  add(line: Buffer): void {
    try {
      this.#parse(line);
    } finally {
      line.fill(0);
    }
  }

  get clientRandom(): Buffer | undefined {
    return this.#clientRandom;
  }
  /** TLS 1.2 master secret (`CLIENT_RANDOM` line). */
  get masterSecret(): Buffer | undefined {
    return this.#secrets.masterSecret;
  }
  get clientHandshakeTrafficSecret(): Buffer | undefined {
    return this.#secrets.clientHandshakeTrafficSecret;
  }
  get serverHandshakeTrafficSecret(): Buffer | undefined {
    return this.#secrets.serverHandshakeTrafficSecret;
  }
  get clientTrafficSecret0(): Buffer | undefined {
    return this.#secrets.clientTrafficSecret0;
  }
  get serverTrafficSecret0(): Buffer | undefined {
    return this.#secrets.serverTrafficSecret0;
  }
  get exporterSecret(): Buffer | undefined {
    return this.#secrets.exporterSecret;
  }

  /** True once the secrets needed for application-data keys of `version` have arrived. */
  hasTrafficSecrets(version: 'TLSv1.2' | 'TLSv1.3'): boolean {
    if (version === 'TLSv1.2') return this.#secrets.masterSecret !== undefined && this.#clientRandom !== undefined;
    return this.#secrets.clientTrafficSecret0 !== undefined && this.#secrets.serverTrafficSecret0 !== undefined;
  }

  /** Zero-fill and forget everything collected. */
  wipe(): void {
    for (const buf of Object.values(this.#secrets)) buf?.fill(0);
    this.#clientRandom?.fill(0);
    this.#secrets = {};
    this.#clientRandom = undefined;
  }

  #parse(line: Buffer): void {
    let end = line.length;
    while (end > 0 && (line[end - 1] === LF || line[end - 1] === CR)) end--;
    const sp1 = line.indexOf(SP);
    const sp2 = sp1 < 0 ? -1 : line.indexOf(SP, sp1 + 1);
    if (sp1 <= 0 || sp2 < 0 || sp2 >= end - 1) throw new KeylogError('malformed key log line');
    // The label is not secret, so decoding it to a string is fine.
    const label = line.toString('latin1', 0, sp1);
    if (!Object.prototype.hasOwnProperty.call(LABELS, label)) return;
    const field = LABELS[label as keyof typeof LABELS];

    const random = decodeHex(line, sp1 + 1, sp2);
    if (random.length !== 32) {
      random.fill(0);
      throw new KeylogError(`client random must be 32 bytes, got ${random.length}`);
    }
    if (this.#clientRandom === undefined) {
      this.#clientRandom = random;
    } else {
      const same = this.#clientRandom.equals(random);
      random.fill(0);
      if (!same) throw new KeylogError('key log line belongs to a different connection (client random differs)');
    }

    const secret = decodeHex(line, sp2 + 1, end);
    if (secret.length === 0) throw new KeylogError('empty secret in key log line');
    this.#secrets[field]?.fill(0);
    this.#secrets[field] = secret;
  }
}

/** Decode ASCII hex in `src[start, end)` into a fresh Buffer, never via a string. */
function decodeHex(src: Buffer, start: number, end: number): Buffer {
  const len = end - start;
  if (len <= 0 || len % 2 !== 0) throw new KeylogError('hex field has odd or zero length');
  const out = secretBuffer(len / 2);
  for (let i = 0; i < out.length; i++) {
    const hi = nibble(src[start + 2 * i]);
    const lo = nibble(src[start + 2 * i + 1]);
    if (hi < 0 || lo < 0) {
      out.fill(0);
      throw new KeylogError('invalid hex digit in key log line');
    }
    out[i] = (hi << 4) | lo;
  }
  return out;
}

function nibble(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30; // 0-9
  if (c >= 0x61 && c <= 0x66) return c - 0x57; // a-f
  if (c >= 0x41 && c <= 0x46) return c - 0x37; // A-F
  return -1;
}
