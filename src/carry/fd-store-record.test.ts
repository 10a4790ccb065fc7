// The connection record memfd: round trip, half-close state and the upgrade's moving mark rewritten in place, pipes found by inode, and clear errors for what is not a record.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { sys } from '../kernel/libc.js';
import { RECORD_SEALS, decodeFlags, encodeFlags, isRecordMemfd, markMoving, pipeInode, readRecord, updateFlags, writeRecord } from './fd-store-record.js';
import type { ConnectionInfo } from '../core/connection.js';

const openFds = () => fs.readdirSync('/proc/self/fd').length;

const info: ConnectionInfo = {
  id: 'c7',
  client: '127.0.0.1:40000',
  backend: '127.0.0.1:8080',
  version: 'TLSv1.3',
  cipher: 'TLS_AES_128_GCM_SHA256',
  mode: 'kernel',
  startedAt: 1700000000000,
  sni: 'example.com',
};
const none = { clientEof: false, backendShut: false, backendEof: false, clientShut: false, closeNotifySent: false };

test('a record reads back as written, with pipes by inode, and a copy of the fd sees the flags rewritten in place', () => {
  const before = openFds();
  const [r, w] = sys.pipe();
  const ino = pipeInode(r)!;
  assert.equal(pipeInode(w), ino, 'both ends of a pipe share its inode');
  const fd = writeRecord({ info, pipes: { c2b: ino, b2c: ino + 1 }, flags: none });
  const copy = sys.dup(fd); // what the store holds: the same open file
  try {
    assert.ok(isRecordMemfd(fd));
    assert.ok(!isRecordMemfd(r));
    assert.deepEqual(readRecord(copy), { info, pipes: { c2b: ino, b2c: ino + 1 }, flags: none, moving: false });
    const later = { ...none, clientEof: true, backendShut: true };
    assert.equal(updateFlags(fd, later), 0);
    assert.deepEqual(readRecord(copy).flags, later);
    assert.equal(readRecord(copy).info.sni, 'example.com');
    assert.equal(markMoving(fd), 0);
    assert.equal(readRecord(copy).moving, true, 'a connection leaving for the upgrade bridge is marked');
    assert.deepEqual(readRecord(copy).flags, later, 'the mark leaves the half-close state alone');
  } finally {
    for (const x of [fd, copy, r, w]) sys.close(x);
  }
  assert.equal(openFds(), before);
});

test('every half-close flag survives encoding on its own', () => {
  for (const name of Object.keys(none) as (keyof typeof none)[]) {
    const f = { ...none, [name]: true };
    assert.deepEqual(decodeFlags(encodeFlags(f)), f, name);
  }
});

/** A sealed record-named memfd holding `bytes` (what writeRecord would have sealed). */
function sealedMemfd(bytes: Buffer): number {
  const fd = sys.memfdCreateSealable('ironsocket-conn');
  sys.write(fd, bytes, bytes.length);
  sys.addSeals(fd, RECORD_SEALS);
  return fd;
}

test('a descriptor that is not a record, or a truncated one, is refused with the reason', () => {
  const good = writeRecord({ info, flags: none });
  const other = sealedMemfd(Buffer.from('hello'));
  const truncated = sealedMemfd(fs.readFileSync(`/proc/self/fd/${good}`).subarray(0, 40));
  try {
    assert.throws(() => readRecord(other), /fd \d+ is not an Iron Socket connection record/);
    assert.throws(() => readRecord(truncated), /is truncated/);
  } finally {
    for (const fd of [other, good, truncated]) sys.close(fd);
  }
});

test('a record is sealed against growing, shrinking and unsealing, yet its flags still change in place', () => {
  const fd = writeRecord({ info, flags: none });
  try {
    assert.equal(sys.getSeals(fd), RECORD_SEALS);
    assert.ok(sys.ftruncate(fd, 10) < 0, 'cannot shrink');
    assert.ok(sys.pwrite(fd, Buffer.of(1), 100_000) < 0, 'cannot grow');
    assert.throws(() => sys.addSeals(fd, 0), /EPERM/, 'the seals cannot change');
    const later = { ...none, clientEof: true };
    assert.equal(updateFlags(fd, later), 0);
    assert.deepEqual(readRecord(fd).flags, later);
  } finally {
    sys.close(fd);
  }
});

test('a well-formed record in an unsealed memfd is refused', () => {
  const good = writeRecord({ info, flags: none });
  const plain = sys.memfdCreate('ironsocket-conn');
  try {
    const bytes = fs.readFileSync(`/proc/self/fd/${good}`);
    sys.write(plain, bytes, bytes.length);
    assert.throws(() => readRecord(plain), /is not sealed/);
  } finally {
    sys.close(good);
    sys.close(plain);
  }
});
