// Hello parsing on hand-built ClientHello / ServerHello / HelloRetryRequest records: randoms, extensions, 0-RTT offers.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  ClientHelloGatherer,
  EXT_EARLY_DATA,
  HELLO_RETRY_REQUEST_RANDOM,
  HelloParseError,
  clientHelloExtensions,
  offersEarlyData,
  parseHello,
  serverRandomFromServerHello,
} from './hello.js';

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

/** A ClientHello handshake message (4-byte header included) with a session id, two suites, null compression and these extensions. */
function clientHello(extensions: Array<[type: number, body: Buffer]>): Buffer {
  const ext = Buffer.concat(
    extensions.map(([type, body]) => {
      const h = Buffer.alloc(4);
      h.writeUInt16BE(type, 0);
      h.writeUInt16BE(body.length, 2);
      return Buffer.concat([h, body]);
    }),
  );
  const extLen = Buffer.alloc(2);
  extLen.writeUInt16BE(ext.length);
  const sessionId = Buffer.alloc(32, 7);
  const body = Buffer.concat([
    Buffer.from([0x03, 0x03]),
    random,
    Buffer.from([sessionId.length]),
    sessionId,
    Buffer.from([0, 4, 0x13, 0x01, 0x13, 0x02]),
    Buffer.from([1, 0]),
    extLen,
    ext,
  ]);
  const header = Buffer.from([1, 0, 0, 0]);
  header.writeUIntBE(body.length, 1, 3);
  return Buffer.concat([header, body]);
}

/** `message` cut into plaintext handshake records of at most `size` bytes of payload. */
function records(message: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < message.length; at += size) {
    const part = message.subarray(at, at + size);
    const h = Buffer.from([22, 3, 1, 0, 0]);
    h.writeUInt16BE(part.length, 3);
    out.push(Buffer.concat([h, part]));
  }
  return out;
}

const SNI: [number, Buffer] = [0, Buffer.from('\x00\x0c\x00\x00\x09localhost', 'latin1')];
const VERSIONS: [number, Buffer] = [43, Buffer.from([2, 3, 4])];
const EARLY: [number, Buffer] = [EXT_EARLY_DATA, Buffer.alloc(0)];

test('the extension types of a ClientHello are listed in order, and early_data (42) among them is an offer of 0-RTT', () => {
  const offering = clientHello([SNI, VERSIONS, EARLY, [41, Buffer.alloc(40, 1)]]);
  assert.deepEqual(clientHelloExtensions(offering), [0, 43, 42, 41]);
  assert.equal(offersEarlyData(offering), true);
  const plain = clientHello([SNI, VERSIONS]);
  assert.deepEqual(clientHelloExtensions(plain), [0, 43]);
  assert.equal(offersEarlyData(plain), false);
  // The number 42 inside another extension's body is not the extension.
  assert.equal(offersEarlyData(clientHello([[0xfe0d, Buffer.from([0, 42, 0, 0])]])), false);
});

test('a ClientHello whose length fields do not add up has no extensions to offer early data with', () => {
  const offering = clientHello([SNI, EARLY]);
  const cut = offering.subarray(0, offering.length - 2);
  cut.writeUIntBE(cut.length - 4, 1, 3);
  assert.throws(() => clientHelloExtensions(cut), HelloParseError);
  assert.equal(offersEarlyData(cut), false);
  const longExtension = Buffer.from(offering);
  longExtension.writeUInt16BE(0xffff, longExtension.length - 2); // the early_data extension's own length
  assert.throws(() => clientHelloExtensions(longExtension), HelloParseError);
  assert.throws(() => clientHelloExtensions(Buffer.from(offering.subarray(0, 10))), HelloParseError);
  assert.throws(() => clientHelloExtensions(Buffer.concat([Buffer.from([2]), offering.subarray(1)])), HelloParseError);
});

test('the gatherer returns a ClientHello split over several records once, when its last byte arrives', () => {
  const offering = clientHello([SNI, VERSIONS, [21, Buffer.alloc(300)], EARLY]);
  const parts = records(offering, 100);
  assert.ok(parts.length >= 4);
  const g = new ClientHelloGatherer();
  const got = parts.map((r) => g.push(r));
  assert.deepEqual(got.slice(0, -1), Array(parts.length - 1).fill(undefined));
  assert.deepEqual(got.at(-1), offering);
  assert.equal(offersEarlyData(got.at(-1)!), true);
  assert.equal(g.push(records(offering, 1000)[0]!), undefined, 'only the first ClientHello is returned');
});

test('the gatherer gives up on records that do not start with a ClientHello', () => {
  const alert = new ClientHelloGatherer();
  assert.equal(alert.push(Buffer.from([21, 3, 3, 0, 2, 2, 40])), undefined);
  assert.equal(alert.push(records(clientHello([EARLY]), 1000)[0]!), undefined);
  const serverHello = new ClientHelloGatherer();
  assert.equal(serverHello.push(helloRecord(2, random)), undefined);
  assert.equal(serverHello.push(records(clientHello([EARLY]), 1000)[0]!), undefined);
});
