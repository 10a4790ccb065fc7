// A connection's shared shapes: half-close carried as flags and back, and a mode label that must agree with the record state.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { assertAgreeingMode, halfCloseFlags, halfCloseOf, type ConnectionInfo, type HalfClose } from './connection.js';

const info = (mode: ConnectionInfo['mode']): ConnectionInfo => ({ id: 'c1', client: 'a', backend: 'b', version: 'TLSv1.3', cipher: 'x', mode, startedAt: 0 });
const state = {
  suite: 'TLS_AES_128_GCM_SHA256',
  version: 'TLSv1.3' as const,
  tx: { key: new Uint8Array(16), iv: new Uint8Array(12), seq: 0n },
  rx: { key: new Uint8Array(16), iv: new Uint8Array(12), seq: 0n },
};

describe('a connection', () => {
  it('is relayed only when its mode label says who protects its records', () => {
    assert.doesNotThrow(() => assertAgreeingMode(info('kernel'), { mode: 'kernel' }));
    assert.doesNotThrow(() => assertAgreeingMode(info('user'), { mode: 'user', state }));
    assert.throws(() => assertAgreeingMode(info('kernel'), { mode: 'user', state }), /labelled kernel mode but its records are in user mode/);
    assert.throws(() => assertAgreeingMode(info('user'), { mode: 'kernel' }), /labelled user mode but its records are in kernel mode/);
  });

  it('carries every reachable half-close state as flags and reads back the same state', () => {
    const ups: HalfClose['up'][] = ['open', 'eof', 'shut'];
    const downs: HalfClose['down'][] = ['open', 'eof', 'notified', 'shut'];
    for (const up of ups) for (const down of downs) assert.deepEqual(halfCloseOf(halfCloseFlags({ up, down })), { up, down });
  });
});
