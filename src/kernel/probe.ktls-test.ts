// kTLS lane: the start-up probe finds what the lane's kernel (each of them) really accepts, and status reports it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { echoBackend } from '../testkit/backends.js';
import { startProxyProcess } from '../testkit/proxy-process.js';
import { TLS_CIPHER_AES_GCM_128, TLS_CIPHER_AES_GCM_256, TLS_CIPHER_CHACHA20_POLY1305 } from './ktls.js';
import { measureKernelBehaviour } from '../testkit/kernel-behaviour.js';
import { probeKernel, readTlsStat } from './probe.js';

test('the probe finds AES-GCM-128/256 and ChaCha20-Poly1305 for TLS 1.2 and 1.3, and rekey support exactly when a live session can be rekeyed', () => {
  const rekeysLive = measureKernelBehaviour().rekeysLive;
  const before = readTlsStat();
  assert.ok(before, '/proc/net/tls_stat must exist in this lane');
  const p = probeKernel();
  assert.equal(p.available, true, p.reason);
  const all = [TLS_CIPHER_AES_GCM_128, TLS_CIPHER_AES_GCM_256, TLS_CIPHER_CHACHA20_POLY1305];
  assert.deepEqual(p.accepted['TLSv1.2'], all);
  assert.deepEqual(p.accepted['TLSv1.3'], all);
  assert.equal(p.rekey, rekeysLive, 'the probe and a live session disagree on rekeying');
  // The probe's sockets are gone: no sessions left installed.
  assert.equal(readTlsStat()!.TlsCurrTxSw, before.TlsCurrTxSw);
});

test('ironsocket status --json reports the probed kernel TLS support', async () => {
  const echo = await echoBackend();
  const p = await startProxyProcess({ backendPort: echo.port });
  try {
    const s = await p.status();
    assert.equal(s.pid, p.pid);
    assert.equal(s.ktls.available, true);
    assert.equal(s.ktls.policy, 'auto');
    assert.deepEqual(s.ktls.ciphers['TLSv1.3'], ['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256']);
    assert.equal(s.ktls.ciphers['TLSv1.2'].length, 6);
    assert.match(s.listeners[0]!.address, /^127\.0\.0\.1:\d+$/);
  } finally {
    await p.stop();
    await echo.close();
  }
});
