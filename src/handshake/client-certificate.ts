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
 * OpenSSL 3's X509_V_ERR_* codes (x509_vfy.h) that node:tls names, by number; any other is reported as node does:
 * UNSPECIFIED. (OpenSSL 3 renumbered INVALID_CA from 24, now NO_ISSUER_PUBLIC_KEY, to 79.)
 */
const VERIFY_ERRORS = new Map<number, string>([
  [2, 'UNABLE_TO_GET_ISSUER_CERT'],
  [3, 'UNABLE_TO_GET_CRL'],
  [4, 'UNABLE_TO_DECRYPT_CERT_SIGNATURE'],
  [5, 'UNABLE_TO_DECRYPT_CRL_SIGNATURE'],
  [6, 'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY'],
  [7, 'CERT_SIGNATURE_FAILURE'],
  [8, 'CRL_SIGNATURE_FAILURE'],
  [9, 'CERT_NOT_YET_VALID'],
  [10, 'CERT_HAS_EXPIRED'],
  [11, 'CRL_NOT_YET_VALID'],
  [12, 'CRL_HAS_EXPIRED'],
  [13, 'ERROR_IN_CERT_NOT_BEFORE_FIELD'],
  [14, 'ERROR_IN_CERT_NOT_AFTER_FIELD'],
  [15, 'ERROR_IN_CRL_LAST_UPDATE_FIELD'],
  [16, 'ERROR_IN_CRL_NEXT_UPDATE_FIELD'],
  [17, 'OUT_OF_MEM'],
  [18, 'DEPTH_ZERO_SELF_SIGNED_CERT'],
  [19, 'SELF_SIGNED_CERT_IN_CHAIN'],
  [20, 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY'],
  [21, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE'],
  [22, 'CERT_CHAIN_TOO_LONG'],
  [23, 'CERT_REVOKED'],
  [25, 'PATH_LENGTH_EXCEEDED'],
  [26, 'INVALID_PURPOSE'],
  [27, 'CERT_UNTRUSTED'],
  [28, 'CERT_REJECTED'],
  [62, 'HOSTNAME_MISMATCH'],
  [79, 'INVALID_CA'],
]);

/** The name of OpenSSL's verification result `code` (0 is success: undefined). */
export function verifyErrorName(code: number): string | undefined {
  if (code === 0) return undefined;
  return VERIFY_ERRORS.get(code) ?? 'UNSPECIFIED';
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
