// Checks the key schedule against published vectors (RFC 8448 §3, the TLS WG PRF vector, an OpenSSL KeyUpdate).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { deriveDirectionKeys, hkdfExpandLabel, tls12KeyBlock, tls12Prf, tls13NextTrafficSecret, tls13TrafficKeys } from './keys.js';
import { suiteByName } from './suites.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

const AES128 = suiteByName('TLS_AES_128_GCM_SHA256', 'TLSv1.3')!;
const AES256 = suiteByName('TLS_AES_256_GCM_SHA384', 'TLSv1.3')!;

// RFC 8448 §3 "Simple 1-RTT Handshake".
const RFC8448 = {
  masterSecret: hex('18 df 06 84 3d 13 a0 8b f2 a4 49 84 4c 5f 8a 47 80 01 bc 4d 4c 62 79 84 d5 a4 1d a8 d0 40 29 19'),
  serverFinishedTranscript: hex('96 08 10 2a 0f 1c cc 6d b6 25 0b 7b 7e 41 7b 1a 00 0e aa da 3d aa e4 77 7a 76 86 c9 ff 83 df 13'),
  serverHsSecret: hex('b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38'),
  serverHsKey: hex('3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc'),
  serverHsIv: hex('5d 31 3e b2 67 12 76 ee 13 00 0b 30'),
  serverApSecret: hex('a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43'),
  serverApKey: hex('9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56'),
  serverApIv: hex('cf 78 2b 88 dd 83 54 9a ad f1 e9 84'),
  clientApSecret: hex('9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5'),
  clientApKey: hex('17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51'),
  clientApIv: hex('5b 78 92 3d ee 08 57 90 33 e5 23 d9'),
};

test('the server application traffic secret of RFC 8448 yields the published key and iv', () => {
  const { key, iv } = tls13TrafficKeys(AES128, RFC8448.serverApSecret);
  assert.deepEqual(key, RFC8448.serverApKey);
  assert.deepEqual(iv, RFC8448.serverApIv);
});

test('the client application traffic secret of RFC 8448 yields the published key and iv', () => {
  const { key, iv } = tls13TrafficKeys(AES128, RFC8448.clientApSecret);
  assert.deepEqual(key, RFC8448.clientApKey);
  assert.deepEqual(iv, RFC8448.clientApIv);
});

test('the server handshake traffic secret of RFC 8448 yields the published key and iv', () => {
  const { key, iv } = tls13TrafficKeys(AES128, RFC8448.serverHsSecret);
  assert.deepEqual(key, RFC8448.serverHsKey);
  assert.deepEqual(iv, RFC8448.serverHsIv);
});

test('HKDF-Expand-Label with a transcript-hash context derives the RFC 8448 server application secret', () => {
  const secret = hkdfExpandLabel('sha256', RFC8448.masterSecret, 's ap traffic', RFC8448.serverFinishedTranscript, 32);
  assert.deepEqual(secret, RFC8448.serverApSecret);
});

test('a KeyUpdate advances a SHA-384 traffic secret to the value OpenSSL computes', () => {
  // Vector published in s2n-tls's key update tests, produced by OpenSSL s_client (TLS_AES_256_GCM_SHA384).
  const current = hex('4bc28934ddd802b00f479e14a72d7725dab45d32b3b145f29e4c5b56677560eb5236b168c71c5c75aa52f3e20ee89bfb');
  const expected = hex('ee85dd54781bd4d8a100589a9fe6ac9a3797b811e977f549cd531be2441d7c63e2b9729d145c11d84af35957727565a4');
  assert.deepEqual(tls13NextTrafficSecret(AES256, current), expected);
});

test('the TLS 1.2 SHA-256 PRF reproduces the published 100-byte test vector', () => {
  // "Generating 100 bytes of pseudo-randomness using TLS1.2PRF-SHA256", IETF TLS WG test vectors.
  const out = tls12Prf(
    'sha256',
    hex('9b be 43 6b a9 40 f0 17 b1 76 52 84 9a 71 db 35'),
    'test label',
    hex('a0 ba 9f 93 6c da 31 18 27 a6 f7 96 ff d5 19 8c'),
    100,
  );
  assert.deepEqual(
    out,
    hex(`e3 f2 29 ba 72 7b e1 7b 8d 12 26 20 55 7c d4 53 c2 aa b2 1d 07 c3 d4 95 32 9b 52 d4 e6 1e db 5a
         6b 30 17 91 e9 0d 35 c9 c9 a4 6b 4e 14 ba f9 af 0f a0 22 f7 07 7d ef 17 ab fd 37 97 c0 56 4b ab
         4f bc 91 66 6e 9d ef 9b 97 fc e3 4f 79 67 89 ba a4 80 82 d1 22 ee 42 c5 a7 2e 5a 51 10 ff f7 01
         87 34 7b 66`),
  );
});

test('the TLS 1.2 key block is split into client key, server key, client iv and server iv in that order', () => {
  const master = Buffer.alloc(48, 7);
  const cr = Buffer.alloc(32, 1);
  const sr = Buffer.alloc(32, 2);
  for (const [name, keyLen, ivLen] of [
    ['ECDHE-RSA-AES128-GCM-SHA256', 16, 4],
    ['ECDHE-ECDSA-AES256-GCM-SHA384', 32, 4],
    ['ECDHE-RSA-CHACHA20-POLY1305', 32, 12],
  ] as const) {
    const suite = suiteByName(name, 'TLSv1.2')!;
    const block = tls12Prf(suite.hash, master, 'key expansion', Buffer.concat([sr, cr]), 2 * keyLen + 2 * ivLen);
    const kb = tls12KeyBlock(suite, master, cr, sr);
    assert.deepEqual(kb.clientKey, block.subarray(0, keyLen));
    assert.deepEqual(kb.serverKey, block.subarray(keyLen, 2 * keyLen));
    assert.deepEqual(kb.clientIv, block.subarray(2 * keyLen, 2 * keyLen + ivLen));
    assert.deepEqual(kb.serverIv, block.subarray(2 * keyLen + ivLen));
  }
});

test('direction keys for the server receive with the client keys and send with the server keys', () => {
  const keys = deriveDirectionKeys(AES128, {
    version: 'TLSv1.3',
    clientTrafficSecret: RFC8448.clientApSecret,
    serverTrafficSecret: RFC8448.serverApSecret,
  });
  assert.deepEqual(keys.rx, { key: RFC8448.clientApKey, iv: RFC8448.clientApIv });
  assert.deepEqual(keys.tx, { key: RFC8448.serverApKey, iv: RFC8448.serverApIv });
  const client = deriveDirectionKeys(
    AES128,
    { version: 'TLSv1.3', clientTrafficSecret: RFC8448.clientApSecret, serverTrafficSecret: RFC8448.serverApSecret },
    'client',
  );
  assert.deepEqual(client.rx, keys.tx);
});

test('secrets of the wrong protocol version or length are refused', () => {
  const tls12 = suiteByName('ECDHE-RSA-AES128-GCM-SHA256', 'TLSv1.2')!;
  assert.throws(() => tls13TrafficKeys(tls12, RFC8448.serverApSecret));
  assert.throws(() => tls13TrafficKeys(AES256, RFC8448.serverApSecret), RangeError);
  assert.throws(() =>
    deriveDirectionKeys(tls12, {
      version: 'TLSv1.3',
      clientTrafficSecret: RFC8448.clientApSecret,
      serverTrafficSecret: RFC8448.serverApSecret,
    }),
  );
  assert.throws(() => tls12KeyBlock(tls12, Buffer.alloc(32), Buffer.alloc(32), Buffer.alloc(32)), RangeError);
});
