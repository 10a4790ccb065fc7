// The connection record memfd: round trip, half-close state and the upgrade's moving mark rewritten in place, pipes found by inode, and clear errors for what is not a record.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { sys } from '../kernel/libc.js';
import type { PairInfo } from '../relay/pair.js';
import { decodeFlags, encodeFlags, isRecordMemfd, markMoving, pipeInode, readRecord, updateFlags, writeRecord } from './record.js';

const openFds = () => fs.readdirSync('/proc/self/fd').length;

const info: PairInfo = {
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

test('a descriptor that is not a record, or a truncated one, is refused with the reason', () => {
  const other = sys.memfdCreate('ironsocket-conn');
  const good = writeRecord({ info, flags: none });
  try {
    sys.write(other, Buffer.from('hello'), 5);
    assert.throws(() => readRecord(other), /fd \d+ is not an Iron Socket connection record/);
    sys.ftruncate(good, 40);
    assert.throws(() => readRecord(good), /is truncated/);
  } finally {
    sys.close(other);
    sys.close(good);
  }
});
