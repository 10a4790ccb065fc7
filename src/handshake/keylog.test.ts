// Key log parsing: every label Node emits, secret hygiene (line and collector zeroing), and bad input.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KeylogCollector, KeylogError } from './keylog.js';

const RANDOM = 'a0'.repeat(16) + '0123456789abcdef'.repeat(2);
const line = (label: string, secretHex: string, random = RANDOM): Buffer => Buffer.from(`${label} ${random} ${secretHex}\n`, 'latin1');

test('TLS 1.3 lines fill the matching handshake, traffic and exporter secrets', () => {
  const k = new KeylogCollector();
  k.add(line('SERVER_HANDSHAKE_TRAFFIC_SECRET', '11'.repeat(32)));
  k.add(line('CLIENT_HANDSHAKE_TRAFFIC_SECRET', '22'.repeat(32)));
  k.add(line('EXPORTER_SECRET', '33'.repeat(32)));
  k.add(line('SERVER_TRAFFIC_SECRET_0', '44'.repeat(48)));
  assert.equal(k.hasTrafficSecrets('TLSv1.3'), false);
  k.add(line('CLIENT_TRAFFIC_SECRET_0', 'AbCdEf'.repeat(16)));
  assert.equal(k.hasTrafficSecrets('TLSv1.3'), true);
  assert.deepEqual(k.serverHandshakeTrafficSecret, Buffer.alloc(32, 0x11));
  assert.deepEqual(k.clientHandshakeTrafficSecret, Buffer.alloc(32, 0x22));
  assert.deepEqual(k.exporterSecret, Buffer.alloc(32, 0x33));
  assert.deepEqual(k.serverTrafficSecret0, Buffer.alloc(48, 0x44));
  assert.deepEqual(k.clientTrafficSecret0, Buffer.from('abcdef'.repeat(16), 'hex'));
  assert.deepEqual(k.clientRandom, Buffer.from(RANDOM, 'hex'));
  assert.equal(k.masterSecret, undefined);
});

test('a TLS 1.2 CLIENT_RANDOM line provides the master secret and client random', () => {
  const k = new KeylogCollector();
  k.add(line('CLIENT_RANDOM', '5a'.repeat(48)));
  assert.ok(k.hasTrafficSecrets('TLSv1.2'));
  assert.deepEqual(k.masterSecret, Buffer.alloc(48, 0x5a));
  assert.deepEqual(k.clientRandom, Buffer.from(RANDOM, 'hex'));
});

test('add zero-fills the line it was given, even when the line is rejected', () => {
  const k = new KeylogCollector();
  const good = line('CLIENT_RANDOM', '5a'.repeat(48));
  k.add(good);
  assert.ok(good.every((b) => b === 0));
  const bad = line('CLIENT_RANDOM', 'zz'.repeat(48));
  assert.throws(() => k.add(bad), KeylogError);
  assert.ok(bad.every((b) => b === 0));
});

test('wipe zero-fills the buffers handed out and forgets them', () => {
  const k = new KeylogCollector();
  k.add(line('CLIENT_TRAFFIC_SECRET_0', '77'.repeat(32)));
  const held = k.clientTrafficSecret0!;
  const random = k.clientRandom!;
  k.wipe();
  assert.ok(held.every((b) => b === 0));
  assert.ok(random.every((b) => b === 0));
  assert.equal(k.clientTrafficSecret0, undefined);
  assert.equal(k.clientRandom, undefined);
});

test('a repeated label replaces and wipes the earlier secret', () => {
  const k = new KeylogCollector();
  k.add(line('SERVER_TRAFFIC_SECRET_0', '01'.repeat(32)));
  const first = k.serverTrafficSecret0!;
  k.add(line('SERVER_TRAFFIC_SECRET_0', '02'.repeat(32)));
  assert.ok(first.every((b) => b === 0));
  assert.deepEqual(k.serverTrafficSecret0, Buffer.alloc(32, 2));
});

test('unknown labels are ignored and lines without a trailing newline are accepted', () => {
  const k = new KeylogCollector();
  k.add(line('CLIENT_EARLY_TRAFFIC_SECRET', '09'.repeat(32)));
  assert.equal(k.clientRandom, undefined);
  k.add(Buffer.from(`EXPORTER_SECRET ${RANDOM} ${'08'.repeat(32)}`));
  assert.deepEqual(k.exporterSecret, Buffer.alloc(32, 8));
});

test('malformed lines and lines from another connection are refused', () => {
  const k = new KeylogCollector();
  assert.throws(() => k.add(Buffer.from('CLIENT_RANDOM\n')), KeylogError);
  assert.throws(() => k.add(Buffer.from(`CLIENT_RANDOM ${RANDOM}\n`)), KeylogError);
  assert.throws(() => k.add(line('CLIENT_RANDOM', 'abc')), KeylogError);
  assert.throws(() => k.add(line('CLIENT_RANDOM', '00'.repeat(48), 'ab'.repeat(31))), KeylogError);
  k.add(line('CLIENT_RANDOM', '00'.repeat(48)));
  assert.throws(() => k.add(line('EXPORTER_SECRET', '00'.repeat(32), 'ff'.repeat(32))), /different connection/);
});
