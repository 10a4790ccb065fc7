// Describes a client's certificate and OpenSSL's verdict on it the way node:tls names them (subject line, CN, SHA-256, error code).
import { X509Certificate } from 'node:crypto';

/** What the handshake learned about a client certificate (verification against the listener's CA bundle). */
export interface ClientCertificate {
  verified: boolean;
  /** OpenSSL's reason when not verified, e.g. "UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "CERT_HAS_EXPIRED". */
  error?: string;
  /** The subject distinguished name on one line ("C=.., O=.., CN=.."); control characters become "?". */
  subject: string;
  subjectCN?: string;
  fingerprint256: string;
}

/**
 * X509_V_ERR_* codes 2…28 by name, in order (OpenSSL's x509_vfy.h), as node:tls reports them; 62 is HOSTNAME_MISMATCH.
 * Any other code is reported as node does: UNSPECIFIED.
 */
const VERIFY_ERRORS = [
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_CRL',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'UNABLE_TO_DECRYPT_CRL_SIGNATURE',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY',
  'CERT_SIGNATURE_FAILURE',
  'CRL_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID',
  'CERT_HAS_EXPIRED',
  'CRL_NOT_YET_VALID',
  'CRL_HAS_EXPIRED',
  'ERROR_IN_CERT_NOT_BEFORE_FIELD',
  'ERROR_IN_CERT_NOT_AFTER_FIELD',
  'ERROR_IN_CRL_LAST_UPDATE_FIELD',
  'ERROR_IN_CRL_NEXT_UPDATE_FIELD',
  'OUT_OF_MEM',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'CERT_CHAIN_TOO_LONG',
  'CERT_REVOKED',
  'INVALID_CA',
  'PATH_LENGTH_EXCEEDED',
  'INVALID_PURPOSE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
] as const;
const FIRST_VERIFY_ERROR = 2;
const X509_V_ERR_HOSTNAME_MISMATCH = 62;

/** The name of OpenSSL's verification result `code` (0 is success: undefined). */
export function verifyErrorName(code: number): string | undefined {
  if (code === 0) return undefined;
  if (code === X509_V_ERR_HOSTNAME_MISMATCH) return 'HOSTNAME_MISMATCH';
  return VERIFY_ERRORS[code - FIRST_VERIFY_ERROR] ?? 'UNSPECIFIED';
}

/** The certificate `der` and verification result `verifyResult` (SSL_get_verify_result) as the proxy reports them. */
export function describeClientCertificate(der: Buffer, verifyResult: number): ClientCertificate {
  const peer = new X509Certificate(der).toLegacyObject();
  const subject = Object.entries(peer.subject ?? {})
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : String(v)}`)
    .join(', ')
    .replace(/[\x00-\x1f\x7f]/g, '?');
  const cn = peer.subject?.CN as string | string[] | undefined;
  const error = verifyErrorName(verifyResult);
  return {
    verified: error === undefined,
    ...(error !== undefined ? { error } : {}),
    subject,
    subjectCN: Array.isArray(cn) ? cn[0] : cn,
    fingerprint256: peer.fingerprint256,
  };
}
