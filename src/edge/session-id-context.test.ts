// Checks which sessions may resume where: HAProxy's session ID context without client certificates, a listener's own (from its CA bundle, CRLs and policy) with them.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sessionIdContext, type HandshakeListener } from './listener-setup.js';

const plain: HandshakeListener = {
  name: 'web',
  groups: [],
  alpn: [],
  backends: [],
  routes: [],
  proxyProtocol: 'off',
  transparent: false,
};
const mtls: HandshakeListener = { ...plain, name: 'api', ca: Buffer.from('CA bundle one'), clientAuth: 'require' };

test("listeners without client certificates share HAProxy's session ID context, so tickets under shared keys resume on either", () => {
  assert.equal(sessionIdContext(plain), 'haproxy');
  assert.equal(sessionIdContext({ ...plain, name: 'other' }), 'haproxy');
});

test('a listener with client certificates has a context of its own, which changes with its CA bundle, its CRLs and its policy', () => {
  const base = sessionIdContext(mtls);
  assert.match(base, /^[0-9a-f]{32}$/, 'within OpenSSL’s 32 bytes');
  assert.notEqual(base, 'haproxy');
  assert.equal(sessionIdContext({ ...mtls }), base, 'stable for the same settings (every worker, every image)');
  for (const changed of [
    { ...mtls, name: 'api2' },
    { ...mtls, ca: Buffer.from('CA bundle two') },
    { ...mtls, crl: ['-----BEGIN X509 CRL-----\nA\n-----END X509 CRL-----\n'] },
    { ...mtls, clientAuth: 'optional' as const },
  ]) {
    assert.notEqual(sessionIdContext(changed), base);
  }
});
