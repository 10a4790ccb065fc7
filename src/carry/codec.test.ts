// The connection codec: a frame carries everything across exec (keys, bigints, buffered bytes, half-close), and a store frame never holds a key.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FLAGS_AT, MOVING_AT, decodeConnection, encodeConnection, encodeFlags, type ConnectionFrame } from './codec.js';
import type { ConnectionInfo } from '../core/connection.js';

const info: ConnectionInfo = {
  id: 'c9',
  client: '192.0.2.1:40000',
  backend: '[::1]:8080',
  version: 'TLSv1.3',
  cipher: 'TLS_CHACHA20_POLY1305_SHA256',
  mode: 'user',
  startedAt: 1700000000000,
  sni: 'é.example',
};
const flags = { clientEof: true, backendShut: true, backendEof: false, clientShut: false, closeNotifySent: false };

function userFrame(): ConnectionFrame {
  return {
    pair: { info, bytesIn: 2 ** 40, bytesOut: 7, c2b: new Uint8Array([1, 2, 3]), flags },
    user: {
      suite: 'TLS_CHACHA20_POLY1305_SHA256',
      version: 'TLSv1.3',
      tx: { key: new Uint8Array(32).fill(1), iv: new Uint8Array(12).fill(2), seq: 2n ** 63n + 1n },
      rx: { key: new Uint8Array(32).fill(3), iv: new Uint8Array(12).fill(4), seq: 0n },
      secrets: { client: new Uint8Array(32).fill(5), server: new Uint8Array(32).fill(6) },
      inbox: new Uint8Array([23, 3, 3]),
    },
  };
}

test('across exec a frame carries identity, counters, buffered bytes, half-close and record state exactly', () => {
  const sent = userFrame();
  const bytes = encodeConnection(sent, 'exec');
  assert.equal(bytes[FLAGS_AT], encodeFlags(flags));
  assert.equal(bytes.includes(Buffer.from('AQEBAQ')), false, 'no key as base64 text');
  const got = decodeConnection(bytes, 'exec');
  assert.deepEqual(got.pair, sent.pair);
  assert.equal(got.user?.tx.seq, 2n ** 63n + 1n);
  assert.deepEqual([...got.user!.secrets!.server], new Array(32).fill(6));
  assert.deepEqual(got.user, sent.user);
  bytes.fill(0);
  assert.deepEqual([...got.user!.rx.key], new Array(32).fill(3), 'decoded keys are copies of their own');
});

test('a store frame holds no key and no buffered byte: encoding one refuses, and so does decoding one that does', () => {
  assert.throws(() => encodeConnection(userFrame(), 'store'), /never holds keys or buffered bytes/);
  const bare = { pair: { info: { ...info, mode: 'kernel' as const }, bytesIn: 5, bytesOut: 6, flags }, pipes: { c2b: 11, b2c: 12 } };
  const stored = decodeConnection(encodeConnection(bare, 'store'), 'store');
  assert.deepEqual(stored, { pair: { ...bare.pair, bytesIn: 0, bytesOut: 0 }, pipes: { c2b: 11, b2c: 12 }, moving: false });
  assert.throws(() => decodeConnection(encodeConnection(userFrame(), 'exec'), 'store'), /is truncated|holds keys/);
});

test('the flags and moving bytes sit at fixed offsets, so the store copy can be rewritten in place', () => {
  const bytes = encodeConnection({ pair: { info, bytesIn: 0, bytesOut: 0, flags }, pipes: { c2b: 1, b2c: 2 } }, 'store');
  bytes[FLAGS_AT] = encodeFlags({ ...flags, clientShut: true });
  bytes[MOVING_AT] = 1;
  const got = decodeConnection(bytes, 'store');
  assert.equal(got.pair.flags.clientShut, true);
  assert.equal(got.moving, true);
});

test('bytes that are not a frame, or are cut short, or describe no connection, are refused with the reason', () => {
  assert.throws(() => decodeConnection(Buffer.from('hello'), 'exec', 'frame 1'), /frame 1 is not an Iron Socket connection record/);
  const good = encodeConnection(userFrame(), 'exec');
  assert.throws(() => decodeConnection(good.subarray(0, good.length - 5), 'exec', 'frame 1'), /frame 1: truncated/);
  const noId = encodeConnection({ pair: { info: { ...info, id: undefined as unknown as string }, bytesIn: 0, bytesOut: 0, flags } }, 'exec');
  assert.throws(() => decodeConnection(noId, 'exec', 'frame 1'), /frame 1: incomplete connection description/);
});
