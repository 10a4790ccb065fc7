// The cipher suites Iron Socket can carry after the handshake (kTLS or userspace), described as data.

export type TlsVersion = 'TLSv1.2' | 'TLSv1.3';
export type AeadName = 'aes-128-gcm' | 'aes-256-gcm' | 'chacha20-poly1305';
export type HashName = 'sha256' | 'sha384';

/** Cipher type numbers from linux/tls.h (struct tls_crypto_info.cipher_type). */
export const KERNEL_CIPHER = {
  AES_GCM_128: 51,
  AES_GCM_256: 52,
  CHACHA20_POLY1305: 54,
} as const;

export interface CipherSuite {
  /** Name exactly as node:tls `getCipher().name` reports it (OpenSSL name; IANA name for TLS 1.3). */
  readonly name: string;
  /** IANA / RFC name, as `getCipher().standardName` reports it. */
  readonly standardName: string;
  /** IANA code point, e.g. 0x1301. */
  readonly code: number;
  readonly version: TlsVersion;
  /** node:crypto cipher name of the record AEAD. */
  readonly aead: AeadName;
  /** Hash of the key schedule (HKDF for 1.3, PRF for 1.2). */
  readonly hash: HashName;
  /** Output length of `hash` in bytes. */
  readonly hashLen: number;
  readonly keyLen: number;
  /**
   * Length of the fixed IV the key schedule produces for each direction:
   * TLS 1.3 → 12 (XORed with the sequence number);
   * TLS 1.2 GCM → 4 (implicit salt; the other 8 nonce bytes travel explicitly in each record);
   * TLS 1.2 ChaCha20-Poly1305 → 12 (XORed with the sequence number, RFC 7905).
   */
  readonly ivLen: number;
  /** Per-record explicit nonce prepended to the ciphertext: 8 for TLS 1.2 GCM, else 0. */
  readonly explicitNonceLen: number;
  /** AEAD tag length; always 16 for these suites. */
  readonly tagLen: number;
  /** linux/tls.h cipher type (TLS_CIPHER_*). */
  readonly kernelCipherType: number;
}

function suite(name: string, standardName: string, code: number, version: TlsVersion, aead: AeadName, hash: HashName): CipherSuite {
  const keyLen = aead === 'aes-128-gcm' ? 16 : 32;
  const gcm12 = version === 'TLSv1.2' && aead !== 'chacha20-poly1305';
  const kernelCipherType =
    aead === 'aes-128-gcm' ? KERNEL_CIPHER.AES_GCM_128 : aead === 'aes-256-gcm' ? KERNEL_CIPHER.AES_GCM_256 : KERNEL_CIPHER.CHACHA20_POLY1305;
  return Object.freeze({
    name,
    standardName,
    code,
    version,
    aead,
    hash,
    hashLen: hash === 'sha256' ? 32 : 48,
    keyLen,
    ivLen: gcm12 ? 4 : 12,
    explicitNonceLen: gcm12 ? 8 : 0,
    tagLen: 16,
    kernelCipherType,
  });
}

/** Every supported suite. Names verified against node 20 / OpenSSL 3.0 `getCipher()`. */
export const SUITES: readonly CipherSuite[] = Object.freeze([
  suite('TLS_AES_128_GCM_SHA256', 'TLS_AES_128_GCM_SHA256', 0x1301, 'TLSv1.3', 'aes-128-gcm', 'sha256'),
  suite('TLS_AES_256_GCM_SHA384', 'TLS_AES_256_GCM_SHA384', 0x1302, 'TLSv1.3', 'aes-256-gcm', 'sha384'),
  suite('TLS_CHACHA20_POLY1305_SHA256', 'TLS_CHACHA20_POLY1305_SHA256', 0x1303, 'TLSv1.3', 'chacha20-poly1305', 'sha256'),
  suite('ECDHE-ECDSA-AES128-GCM-SHA256', 'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256', 0xc02b, 'TLSv1.2', 'aes-128-gcm', 'sha256'),
  suite('ECDHE-RSA-AES128-GCM-SHA256', 'TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256', 0xc02f, 'TLSv1.2', 'aes-128-gcm', 'sha256'),
  suite('ECDHE-ECDSA-AES256-GCM-SHA384', 'TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384', 0xc02c, 'TLSv1.2', 'aes-256-gcm', 'sha384'),
  suite('ECDHE-RSA-AES256-GCM-SHA384', 'TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384', 0xc030, 'TLSv1.2', 'aes-256-gcm', 'sha384'),
  suite('ECDHE-ECDSA-CHACHA20-POLY1305', 'TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256', 0xcca9, 'TLSv1.2', 'chacha20-poly1305', 'sha256'),
  suite('ECDHE-RSA-CHACHA20-POLY1305', 'TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256', 0xcca8, 'TLSv1.2', 'chacha20-poly1305', 'sha256'),
]);

/**
 * Find a supported suite by the name node:tls reports (`getCipher().name`, or its `standardName`)
 * and the negotiated protocol (`getProtocol()`). Returns undefined for anything unsupported,
 * including a known name paired with the wrong version.
 */
export function suiteByName(name: string, version: string): CipherSuite | undefined {
  return SUITES.find((s) => s.version === version && (s.name === name || s.standardName === name));
}
