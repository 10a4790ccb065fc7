// Hello random extraction from hand-built ClientHello / ServerHello / HelloRetryRequest records.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { HELLO_RETRY_REQUEST_RANDOM, HelloParseError, parseHello, serverRandomFromServerHello } from './hello.js';

/** A plaintext handshake record holding one hello message of `msgType` with `random` and some trailing bytes. */
function helloRecord(msgType: number, random: Buffer, tail = Buffer.from([0, 0x13, 0x01, 0])): Buffer {
  const body = Buffer.concat([Buffer.from([0x03, 0x03]), random, tail]);
  const msgHeader = Buffer.from([msgType, 0, 0, 0]);
  msgHeader.writeUIntBE(body.length, 1, 3);
  const msg = Buffer.concat([msgHeader, body]);
  const header = Buffer.from([22, 0x03, 0x03, 0, 0]);
  header.writeUInt16BE(msg.length, 3);
  return Buffer.concat([header, msg]);
}

const random = Buffer.from(Array.from({ length: 32 }, (_, i) => 0xa0 + i));

test('the ServerHello random is read from bytes 6 to 38 of the handshake message', () => {
  const record = helloRecord(2, random);
  assert.deepEqual(serverRandomFromServerHello(record), random);
  assert.deepEqual(record.subarray(5 + 6, 5 + 38), random);
  assert.deepEqual(parseHello(record), { kind: 'server_hello', legacyVersion: 0x0303, random });
});

test('a ClientHello yields the client random', () => {
  const info = parseHello(helloRecord(1, random));
  assert.equal(info.kind, 'client_hello');
  assert.deepEqual(info.random, random);
  assert.deepEqual(serverRandomFromServerHello(helloRecord(1, random)), random);
});

test('the returned random is a copy that does not alias the record', () => {
  const record = helloRecord(2, random);
  const r = serverRandomFromServerHello(record);
  record.fill(0);
  assert.deepEqual(r, random);
});

test('a ServerHello carrying the special RFC 8446 random is reported as a HelloRetryRequest', () => {
  assert.deepEqual(HELLO_RETRY_REQUEST_RANDOM, createHash('sha256').update('HelloRetryRequest').digest());
  assert.equal(HELLO_RETRY_REQUEST_RANDOM.toString('hex'), 'cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c');
  assert.equal(parseHello(helloRecord(2, HELLO_RETRY_REQUEST_RANDOM)).kind, 'hello_retry_request');
});

test('a record that is only the first part of a longer ClientHello still yields the random', () => {
  const record = helloRecord(1, random, Buffer.alloc(500));
  const first = record.subarray(0, 5 + 4 + 2 + 32);
  assert.deepEqual(parseHello(first).random, random);
});

test('non-handshake records, other handshake messages and truncated records are refused', () => {
  const record = helloRecord(2, random);
  const alert = Buffer.from(record);
  alert[0] = 21;
  assert.throws(() => parseHello(alert), HelloParseError);
  const certificate = Buffer.from(record);
  certificate[5] = 11;
  assert.throws(() => parseHello(certificate), HelloParseError);
  assert.throws(() => parseHello(record.subarray(0, 30)), HelloParseError);
  assert.throws(() => parseHello(Buffer.from([22, 3])), HelloParseError);
});
