// The hand-off state across exec: it reads back exactly from its sealed memfd, and a memfd that is not sealed, or not a hand-off, is refused.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sys } from '../kernel/libc.js';
import { STATE_SEALS, decodeState, encodeState, readStateMemfd, writeStateMemfd, type HandoffState } from './state.js';

const state: HandoffState = {
  generation: 3,
  attempt: 'u-17',
  startedAt: '2026-12-07T00:00:00.000Z',
  execAt: 1765065600000,
  intoBridgeMs: 12,
  moved: 200,
  counters: { accepted: 5, closed_completed: 2 },
  probe: { available: true, accepted: { 'TLSv1.2': [51], 'TLSv1.3': [51, 52] }, rekey: false },
  listeners: [{ fd: 7, address: '127.0.0.1:8443' }],
  bridge: { linkFd: 9, pid: 4242 },
  nextId: 301,
  fdStore: true,
};

test('the hand-off state reads back exactly from its sealed memfd', () => {
  const encoded = encodeState(state);
  const fd = writeStateMemfd(encoded);
  assert.equal(sys.getSeals(fd), STATE_SEALS);
  const raw = readStateMemfd(fd); // closes fd
  assert.deepEqual(decodeState(raw), state);
});

test('an unsealed memfd, or one holding something else, is refused', () => {
  const plain = sys.memfdCreateSealable('not-sealed');
  try {
    const bytes = encodeState(state);
    sys.write(plain, bytes, bytes.length);
    assert.throws(() => readStateMemfd(plain), /is not sealed/);
  } finally {
    sys.close(plain);
  }
  assert.throws(() => decodeState(Buffer.from('IRONSOCKET-BATCH-2\n\0\0\0\0')), /not "IRONSOCKET-HANDOFF-2"/);
});
