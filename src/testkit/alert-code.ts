// A node:tls client's error code for a TLS alert, the same whichever OpenSSL the node binary carries.
/**
 * OpenSSL 3.2 renamed the alert reasons ("sslv3 alert handshake failure" → "ssl/tls alert handshake failure"), so
 * node 20 (OpenSSL 3.0) reports ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE where node 24 (3.5) reports
 * ERR_SSL_SSL/TLS_ALERT_HANDSHAKE_FAILURE: the older spelling for both. Other codes pass through.
 */
export function alertCode(code: string): string {
  return code.replace(/^ERR_SSL_SSL\/TLS_ALERT_/, 'ERR_SSL_SSLV3_ALERT_');
}
