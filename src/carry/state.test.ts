// The hand-off state across exec: it reads back exactly from its sealed memfd, and a memfd that is not sealed, or not a hand-off, is refused.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
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

test('the session ticket keys cross as a blob of their own: the JSON part never holds their bytes, and they read back in a buffer of their own', () => {
  const keys = new Uint8Array(new ArrayBuffer(3 * 48));
  crypto.randomFillSync(keys);
  const withTickets: HandoffState = { ...state, tickets: { keys, encrypt: 1, rotatedAt: 1765065000000, source: 'generated' } };
  const encoded = encodeState(withTickets);
  const jsonLength = encoded.readUInt32LE('IRONSOCKET-HANDOFF-2\n'.length);
  const json = encoded.subarray(0, 'IRONSOCKET-HANDOFF-2\n'.length + 4 + jsonLength);
  assert.equal(json.includes(Buffer.from(keys.subarray(0, 16))), false, 'no key byte run in the JSON');
  for (const text of [Buffer.from(keys).toString('hex'), Buffer.from(keys).toString('base64')]) {
    assert.equal(encoded.includes(text.slice(0, 24)), false, 'nor as text anywhere');
  }
  assert.ok(encoded.subarray(json.length).includes(Buffer.from(keys)), 'the bytes as they are, after the JSON');
  const back = decodeState(readStateMemfd(writeStateMemfd(encoded)));
  assert.deepEqual(Buffer.from(back.tickets!.keys), Buffer.from(keys));
  assert.equal(back.tickets!.keys.byteOffset, 0);
  assert.equal(back.tickets!.keys.buffer.byteLength, keys.length, 'an ArrayBuffer of its own');
  assert.deepEqual({ ...back.tickets, keys: undefined }, { encrypt: 1, rotatedAt: 1765065000000, source: 'generated', keys: undefined });
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
