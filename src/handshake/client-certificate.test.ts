// OpenSSL 3's verification result codes get the names node:tls gives them (INVALID_CA moved to 79 in OpenSSL 3).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { verifyErrorName } from './client-certificate.js';

test('verification codes are named as node:tls names them under OpenSSL 3, others UNSPECIFIED, and 0 is no error', () => {
  assert.equal(verifyErrorName(0), undefined);
  assert.equal(verifyErrorName(20), 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY');
  assert.equal(verifyErrorName(23), 'CERT_REVOKED');
  assert.equal(verifyErrorName(79), 'INVALID_CA');
  assert.equal(verifyErrorName(24), 'UNSPECIFIED', 'NO_ISSUER_PUBLIC_KEY in OpenSSL 3 (INVALID_CA in 1.1)');
  assert.equal(verifyErrorName(62), 'HOSTNAME_MISMATCH');
  assert.equal(verifyErrorName(1), 'UNSPECIFIED');
});
