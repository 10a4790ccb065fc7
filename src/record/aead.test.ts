// Record protection: RFC 8448 vectors, edge cases, and one long-lived OpenSSL context checked against node:crypto (interop: aead-interop.test.ts).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, createDecipheriv, randomBytes, type CipherGCMTypes } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Alert, MAX_PLAINTEXT, MAX_RECORD, RecordError, RecordProtection } from './aead.js';
import { tls13TrafficKeys } from './keys.js';
import { SUITES, suiteByName, type CipherSuite } from './suites.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const AES128 = suiteByName('TLS_AES_128_GCM_SHA256', 'TLSv1.3')!;

const pair = (suite: CipherSuite, seq = 0n): [RecordProtection, RecordProtection] => {
  const key = Buffer.alloc(suite.keyLen, 0x42);
  const iv = Buffer.alloc(suite.ivLen, 0x24);
  return [new RecordProtection(suite, key, iv, seq), new RecordProtection(suite, key, iv, seq)];
};

const openRecord = (rp: RecordProtection, rec: Buffer) => rp.open(rec.subarray(0, 5), rec.subarray(5));

const alertOf = (alert: number) => (err: unknown) => err instanceof RecordError && err.alert === alert;

describe('RFC 8448 application data records', () => {
  const payload = Buffer.from(Array.from({ length: 50 }, (_, i) => i));
  const clientRecord = hex(`17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55 cb ef ac ea 42 f9 14 aa 66 bc ab
    3f 2b 98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b 62 97 4e 1f 5a 62 92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb 21 69 49
    15 e4`);
  const serverRecord = hex(`17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4 a4 69 32 fc 32 25 d0 5f 82 aa
    1b 36 e3 0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8 fc c4 9c 4b f2 e5 f0 a2 1c 00 47 c2 ab f3 32 54 0d d0 32 e1 67
    c2 95 5d`);
  const client = tls13TrafficKeys(AES128, hex('9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5'));
  const server = tls13TrafficKeys(AES128, hex('a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643'));

  test('the client record opens at sequence 0 and sealing reproduces it byte for byte', () => {
    const rx = new RecordProtection(AES128, client.key, client.iv, 0n);
    assert.deepEqual(openRecord(rx, clientRecord), { type: 23, plaintext: payload });
    assert.equal(rx.sequence, 1n);
    assert.deepEqual(new RecordProtection(AES128, client.key, client.iv, 0n).seal(23, payload), clientRecord);
  });

  test('the server record opens at sequence 1, after the NewSessionTicket', () => {
    const rx = new RecordProtection(AES128, server.key, server.iv, 1n);
    assert.deepEqual(openRecord(rx, serverRecord), { type: 23, plaintext: payload });
    assert.deepEqual(new RecordProtection(AES128, server.key, server.iv, 1n).seal(23, payload), serverRecord);
    assert.throws(() => openRecord(new RecordProtection(AES128, server.key, server.iv, 0n), serverRecord), alertOf(20));
  });
});

describe('round trips and failure handling', () => {
  for (const suite of SUITES) {
    test(`records sealed with ${suite.name} (${suite.version}) open to the same type and bytes`, () => {
      const [tx, rx] = pair(suite, 5n);
      for (const [type, size] of [
        [23, 0],
        [23, 1],
        [22, 300],
        [21, 2],
        [23, MAX_PLAINTEXT],
      ] as const) {
        const plaintext = Buffer.alloc(size, size & 0xff);
        const record = tx.seal(type, plaintext);
        assert.equal(record.length, 5 + suite.explicitNonceLen + size + (suite.version === 'TLSv1.3' ? 1 : 0) + 16);
        assert.equal(record[0], suite.version === 'TLSv1.3' ? 23 : type);
        assert.equal(record.readUInt16BE(1), 0x0303);
        assert.deepEqual(openRecord(rx, record), { type, plaintext });
      }
      assert.equal(tx.sequence, 10n);
      assert.equal(rx.sequence, 10n);
    });
  }

  test('tampering with body, tag or header gives bad_record_mac and leaves the sequence alone', () => {
    for (const suite of SUITES) {
      const [tx, rx] = pair(suite);
      const record = tx.seal(23, Buffer.from('attack at dawn'));
      for (const at of [0, 5, 5 + suite.explicitNonceLen, record.length - 1]) {
        if (at === 0 && suite.version === 'TLSv1.3') continue; // outer type is checked before decryption
        const bad = Buffer.from(record);
        bad[at] ^= 0x01;
        assert.throws(() => openRecord(rx, bad), alertOf(Alert.bad_record_mac), `${suite.name} byte ${at}`);
        assert.equal(rx.sequence, 0n);
      }
      assert.equal(openRecord(rx, record).plaintext.toString(), 'attack at dawn');
    }
  });

  test('a record replayed at a later sequence number does not authenticate', () => {
    for (const suite of SUITES) {
      const [tx, rx] = pair(suite);
      const first = tx.seal(23, Buffer.from('one'));
      openRecord(rx, first);
      // TLS 1.2 GCM carries the nonce explicitly, but the sequence is still in the additional data.
      assert.throws(() => openRecord(rx, first), alertOf(Alert.bad_record_mac), suite.name);
    }
  });

  test('TLS 1.2 GCM records carry the sequence number as the explicit nonce', () => {
    const suite = suiteByName('ECDHE-RSA-AES128-GCM-SHA256', 'TLSv1.2')!;
    const [tx] = pair(suite, 0x0102030405n);
    assert.equal(tx.seal(23, Buffer.from('x')).readBigUInt64BE(5), 0x0102030405n);
  });

  test('oversized records are refused with record_overflow and oversized plaintext cannot be sealed', () => {
    for (const suite of SUITES) {
      const [tx, rx] = pair(suite);
      assert.throws(() => tx.seal(23, Buffer.alloc(MAX_PLAINTEXT + 1)), RangeError);
      const tooLong = Buffer.alloc(MAX_PLAINTEXT + 257);
      const header = Buffer.from([23, 3, 3, 0, 0]);
      header.writeUInt16BE(tooLong.length, 3);
      assert.throws(() => rx.open(header, tooLong), alertOf(Alert.record_overflow));
      // Within the ciphertext bound but implying more plaintext than a record may hold.
      const inner = suite.explicitNonceLen + MAX_PLAINTEXT + (suite.version === 'TLSv1.3' ? 2 : 1) + 16;
      header.writeUInt16BE(inner, 3);
      assert.throws(() => rx.open(header, Buffer.alloc(inner)), alertOf(Alert.record_overflow));
      assert.equal(rx.sequence, 0n);
    }
  });

  test('malformed headers are decode errors; a body shorter than its tag is bad_record_mac (every suite, 0 to 15 bytes)', () => {
    for (const suite of SUITES) {
      const [tx, rx] = pair(suite);
      const record = tx.seal(23, Buffer.from('hello'));
      assert.throws(() => rx.open(record.subarray(0, 4), record.subarray(5)), alertOf(Alert.decode_error));
      assert.throws(() => rx.open(record.subarray(0, 5), record.subarray(5, -1)), alertOf(Alert.decode_error));
      for (let n = 0; n < 16; n++) {
        assert.throws(() => rx.open(Buffer.from([23, 3, 3, 0, n]), Buffer.alloc(n)), alertOf(Alert.bad_record_mac), `${suite.name}: ${n} bytes`);
      }
      assert.equal(rx.sequence, 0n);
    }
  });

  test('a TLS 1.3 ChangeCipherSpec after the handshake is unexpected_message, not a short record', () => {
    const [, rx] = pair(AES128);
    assert.throws(() => rx.open(Buffer.from([20, 3, 3, 0, 1]), Buffer.from([1])), alertOf(Alert.unexpected_message));
  });

  test('TLS 1.3 padding is stripped and an all-zero inner plaintext is rejected', () => {
    const [tx, rx] = pair(AES128);
    const padded = tx.seal(22, Buffer.from('hello'), 200);
    assert.equal(padded.length, 5 + 5 + 1 + 200 + 16);
    assert.deepEqual(openRecord(rx, padded), { type: 22, plaintext: Buffer.from('hello') });
    const allZero = tx.seal(0, Buffer.alloc(0), 7);
    assert.throws(() => openRecord(rx, allZero), alertOf(Alert.unexpected_message));
    assert.throws(() => rx.open(Buffer.from([22, 3, 3, 0, 20]), Buffer.alloc(20)), alertOf(Alert.unexpected_message));
  });

  test('the sequence number may reach 2^64 - 1 but never wraps', () => {
    const max = (1n << 64n) - 1n;
    const [tx, rx] = pair(AES128, max);
    openRecord(rx, tx.seal(23, Buffer.from('last')));
    assert.equal(tx.sequence, 1n << 64n);
    assert.throws(() => tx.seal(23, Buffer.from('one too many')), RecordError);
    assert.throws(() => new RecordProtection(AES128, Buffer.alloc(16), Buffer.alloc(12), 1n << 64n), RangeError);
  });

  test('rekey restarts the sequence with new keys and wipe zeroes the keys', () => {
    const [tx, rx] = pair(AES128);
    openRecord(rx, tx.seal(23, Buffer.from('a')));
    const key = Buffer.alloc(16, 9);
    const iv = Buffer.alloc(12, 8);
    tx.rekey(key, iv);
    rx.rekey(key, iv);
    assert.equal(tx.sequence, 0n);
    assert.equal(openRecord(rx, tx.seal(23, Buffer.from('b'))).plaintext.toString(), 'b');
    tx.wipe();
    assert.throws(() => tx.seal(23, Buffer.from('c')));
    assert.throws(() => new RecordProtection(AES128, Buffer.alloc(15), Buffer.alloc(12)), RangeError);
  });
});

// ---------------------------------------------------------------------------------------------
// One OpenSSL context per RecordProtection, checked against an independent node:crypto reference
// (a new cipher object per record, as the implementation used to do).

function refNonce(suite: CipherSuite, iv: Buffer, seq: bigint, explicit: Buffer): Buffer {
  if (suite.explicitNonceLen > 0) return Buffer.concat([iv, explicit]);
  const nonce = Buffer.from(iv);
  const s = Buffer.alloc(8);
  s.writeBigUInt64BE(seq);
  for (let i = 0; i < 8; i++) nonce[4 + i] ^= s[i];
  return nonce;
}

function refAad(suite: CipherSuite, header: Buffer, seq: bigint, innerLen: number): Buffer {
  if (suite.version === 'TLSv1.3') return header;
  const aad = Buffer.alloc(13);
  aad.writeBigUInt64BE(seq);
  header.copy(aad, 8, 0, 3);
  aad.writeUInt16BE(innerLen, 11);
  return aad;
}

function refSeal(suite: CipherSuite, key: Buffer, iv: Buffer, seq: bigint, type: number, plaintext: Buffer, padding = 0): Buffer {
  const tls13 = suite.version === 'TLSv1.3';
  const inner = tls13 ? Buffer.concat([plaintext, Buffer.from([type]), Buffer.alloc(padding)]) : plaintext;
  const explicit = Buffer.alloc(suite.explicitNonceLen);
  if (explicit.length) explicit.writeBigUInt64BE(seq);
  const header = Buffer.from([tls13 ? 23 : type, 3, 3, 0, 0]);
  header.writeUInt16BE(explicit.length + inner.length + 16, 3);
  const c = createCipheriv(suite.aead as CipherGCMTypes, key, refNonce(suite, iv, seq, explicit), { authTagLength: 16 });
  c.setAAD(refAad(suite, header, seq, inner.length), { plaintextLength: inner.length });
  return Buffer.concat([header, explicit, c.update(inner), c.final(), c.getAuthTag()]);
}

function refOpen(suite: CipherSuite, key: Buffer, iv: Buffer, seq: bigint, record: Buffer): { type: number; plaintext: Buffer } {
  const header = record.subarray(0, 5);
  const explicit = record.subarray(5, 5 + suite.explicitNonceLen);
  const ct = record.subarray(5 + explicit.length, record.length - 16);
  const d = createDecipheriv(suite.aead as CipherGCMTypes, key, refNonce(suite, iv, seq, explicit), { authTagLength: 16 });
  d.setAAD(refAad(suite, header, seq, ct.length), { plaintextLength: ct.length });
  d.setAuthTag(record.subarray(record.length - 16));
  const inner = Buffer.concat([d.update(ct), d.final()]);
  if (suite.version !== 'TLSv1.3') return { type: header[0], plaintext: inner };
  let end = inner.length - 1;
  while (inner[end] === 0) end--;
  return { type: inner[end], plaintext: inner.subarray(0, end) };
}

/** Record sizes that alternate small and large across 0..2^14, hitting both ends. */
const sizeAt = (i: number) => (i % 10 === 0 ? 0 : i % 10 === 1 ? MAX_PLAINTEXT : i % 2 ? (i * 7919) % (MAX_PLAINTEXT + 1) : (i * 31) % 1500);

describe('one long-lived OpenSSL context per RecordProtection', () => {
  for (const suite of SUITES) {
    test(`${suite.name} (${suite.version}): 1000 records of varying sizes match node:crypto both ways`, () => {
      const key = randomBytes(suite.keyLen);
      const iv = randomBytes(suite.ivLen);
      const start = 1000n;
      const tx = new RecordProtection(suite, key, iv, start);
      const rx = new RecordProtection(suite, key, iv, start);
      const rxInPlace = new RecordProtection(suite, key, iv, start);
      const tls13 = suite.version === 'TLSv1.3';
      const scratch = Buffer.alloc(MAX_RECORD);
      try {
        for (let i = 0; i < 1000; i++) {
          const seq = start + BigInt(i);
          const size = sizeAt(i);
          const type = [23, 22, 21, 23][i % 4];
          const padding = tls13 && i % 7 === 3 ? Math.min(i, MAX_PLAINTEXT - size) : 0;
          const plaintext = randomBytes(size);
          // Our seal (alternating seal and sealInto) is byte for byte the reference's.
          const want = refSeal(suite, key, iv, seq, type, plaintext, padding);
          let sealed: Buffer;
          if (i % 2) {
            sealed = Buffer.from(scratch.subarray(0, tx.sealInto(type, plaintext, scratch, padding)));
          } else {
            sealed = tx.seal(type, plaintext, padding);
          }
          assert.ok(sealed.equals(want), `record ${i} (${size} bytes) sealed as the reference does`);
          assert.deepEqual(refOpen(suite, key, iv, seq, sealed), { type, plaintext });
          // The reference's record opens with ours, copying and in place.
          const copy = Buffer.from(want);
          const opened = rx.open(copy.subarray(0, 5), copy.subarray(5));
          assert.equal(opened.type, type);
          assert.ok(opened.plaintext.equals(plaintext), `record ${i} opened`);
          assert.ok(copy.equals(want), 'open() leaves the record alone');
          const inPlace = rxInPlace.openInPlace(copy.subarray(0, 5), copy.subarray(5));
          assert.equal(inPlace.type, type);
          assert.ok(inPlace.plaintext.equals(plaintext), `record ${i} opened in place`);
          assert.equal(inPlace.plaintext.buffer, copy.buffer, 'the in-place plaintext is a view into the body');
        }
        for (const rp of [tx, rx, rxInPlace]) assert.equal(rp.sequence, start + 1000n);
      } finally {
        for (const rp of [tx, rx, rxInPlace]) rp.wipe();
      }
    });
  }

  test('one object can seal and open in turn (the context switches direction per record)', () => {
    for (const suite of SUITES) {
      const key = randomBytes(suite.keyLen);
      const iv = randomBytes(suite.ivLen);
      const both = new RecordProtection(suite, key, iv);
      const peer = new RecordProtection(suite, key, iv);
      for (let i = 0; i < 50; i++) {
        const p = randomBytes(sizeAt(i));
        if (i % 2) assert.ok(peer.open(...split(both.seal(23, p))).plaintext.equals(p), suite.name);
        else assert.ok(both.open(...split(peer.seal(23, p))).plaintext.equals(p), suite.name);
      }
      both.wipe();
      peer.wipe();
    }
  });

  test('a failed open does not poison the context: the next good record opens', () => {
    for (const suite of SUITES) {
      const [tx, rx] = pair(suite, 7n);
      for (let i = 0; i < 20; i++) {
        const p = randomBytes(sizeAt(i));
        const record = tx.seal(23, p);
        const bad = Buffer.from(record);
        bad[bad.length - 1 - (i % 20)] ^= 0x80;
        assert.throws(() => rx.open(...split(bad)), alertOf(Alert.bad_record_mac));
        const badInPlace = Buffer.from(bad);
        assert.throws(() => rx.openInPlace(...split(badInPlace)), alertOf(Alert.bad_record_mac));
        // What was decrypted in place without authenticating is not left behind.
        const ctEnd = badInPlace.length - 16;
        assert.ok(
          badInPlace.subarray(5 + suite.explicitNonceLen, ctEnd).every((b) => b === 0),
          `${suite.name}: unauthenticated output zeroed`,
        );
        assert.equal(rx.sequence, 7n + BigInt(i));
        const opened = i % 2 ? rx.openInPlace(...split(Buffer.from(record))) : rx.open(...split(record));
        assert.ok(opened.plaintext.equals(p), `${suite.name} record ${i} after a failure`);
      }
      tx.wipe();
      rx.wipe();
    }
  });

  test('wipe() makes every use throw; rekey() after wipe() brings the object back', () => {
    for (const suite of SUITES) {
      const [tx, rx] = pair(suite, 3n);
      const record = tx.seal(23, Buffer.from('before'));
      tx.wipe();
      tx.wipe(); // idempotent
      assert.throws(() => tx.seal(23, Buffer.from('x')), /after wipe/);
      assert.throws(() => tx.sealInto(23, Buffer.from('x'), Buffer.alloc(MAX_RECORD)), /after wipe/);
      assert.throws(() => tx.open(...split(record)), /after wipe/);
      assert.throws(() => tx.openInPlace(...split(Buffer.from(record))), /after wipe/);
      assert.throws(() => tx.exportState(), /wiped/);

      const key = randomBytes(suite.keyLen);
      const iv = randomBytes(suite.ivLen);
      tx.rekey(key, iv);
      assert.equal(tx.sequence, 0n);
      const fresh = new RecordProtection(suite, key, iv);
      const sealed = tx.seal(23, Buffer.from('after'));
      assert.ok(sealed.equals(refSeal(suite, key, iv, 0n, 23, Buffer.from('after'))));
      assert.equal(fresh.open(...split(sealed)).plaintext.toString(), 'after');
      assert.deepEqual(tx.exportState(), { key, iv, seq: 1n });
      // rekey of a live object re-keys its context in place.
      rx.rekey(key, iv);
      assert.equal(rx.open(...split(refSeal(suite, key, iv, 0n, 23, Buffer.from('live')))).plaintext.toString(), 'live');
      for (const rp of [tx, rx, fresh]) rp.wipe();
    }
  });

  test('sealInto writes exactly the record and refuses an output too small', () => {
    for (const suite of SUITES) {
      const key = randomBytes(suite.keyLen);
      const iv = randomBytes(suite.ivLen);
      const a = new RecordProtection(suite, key, iv);
      const b = new RecordProtection(suite, key, iv);
      const out = Buffer.alloc(MAX_RECORD, 0xee);
      const p = randomBytes(100);
      const n = a.sealInto(23, p, out);
      assert.ok(out.subarray(0, n).equals(b.seal(23, p)));
      assert.ok(
        out.subarray(n).every((x) => x === 0xee),
        'nothing written past the record',
      );
      assert.throws(() => a.sealInto(23, p, Buffer.alloc(n - 1)), RangeError);
      assert.equal(a.sequence, 1n, 'a refused seal consumes no sequence number');
      a.wipe();
      b.wipe();
    }
  });

  test('objects collected without wipe() have their contexts freed without harm', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as (() => void) | undefined;
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 2000; i++) {
        const [tx, rx] = pair(SUITES[i % SUITES.length]);
        rx.open(...split(tx.seal(23, Buffer.from('dropped'))));
      }
      gc?.();
      await new Promise((r) => setTimeout(r, 10));
    }
    const [tx, rx] = pair(AES128);
    assert.equal(rx.open(...split(tx.seal(23, Buffer.from('still fine')))).plaintext.toString(), 'still fine');
  });
});

const split = (rec: Buffer): [Buffer, Buffer] => [rec.subarray(0, 5), rec.subarray(5)];
