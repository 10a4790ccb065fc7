// The userspace record reader: records that arrive in pieces, interleaved across connections, or cut by an upgrade come out exact.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { describe, it } from 'node:test';
import { SOCK_NONBLOCK, SOCK_STREAM, sys } from '../kernel/libc.js';
import { RecordProtection } from '../record/aead.js';
import { suiteByName } from '../record/suites.js';
import { UserClient } from './user-client.js';

const suite = suiteByName('TLS_AES_128_GCM_SHA256', 'TLSv1.3')!;

/** A connected pair: the proxy's UserClient on one end, the "client" sealing records on the other. */
function connection() {
  const [peer, fd] = sys.socketpair(SOCK_STREAM | SOCK_NONBLOCK);
  const key = crypto.randomBytes(16);
  const iv = crypto.randomBytes(12);
  const sealer = new RecordProtection(suite, Buffer.from(key), Buffer.from(iv), 0n);
  const user = new UserClient(fd, {
    suite,
    version: 'TLSv1.3',
    rx: { key: Buffer.from(key), iv: Buffer.from(iv), seq: 0n },
    tx: { key: crypto.randomBytes(16), iv: crypto.randomBytes(12), seq: 0n },
  });
  const send = (b: Buffer) => assert.equal(sys.send(peer, b, b.length), b.length);
  return { peer, fd, sealer, user, send, key, iv };
}

/** Reads everything available as plaintext. */
function drain(u: UserClient): Buffer {
  const out: Buffer[] = [];
  const buf = Buffer.alloc(70_000);
  for (;;) {
    const r = u.read(buf);
    if (r.kind === 'data') out.push(Buffer.from(buf.subarray(0, r.n)));
    else if (r.kind === 'again') return Buffer.concat(out);
    else assert.fail(`unexpected ${JSON.stringify(r)}`);
  }
}

describe('the userspace record reader', () => {
  it('reassembles records that arrive a few bytes at a time, while another connection reads whole records in between', () => {
    const a = connection();
    const b = connection();
    try {
      const wantA = crypto.randomBytes(40_000);
      const wantB: Buffer[] = [];
      const recordsA = Buffer.concat([
        a.sealer.seal(23, wantA.subarray(0, 16_384)),
        a.sealer.seal(23, wantA.subarray(16_384, 32_768)),
        a.sealer.seal(23, wantA.subarray(32_768)),
      ]);
      const gotA: Buffer[] = [];
      const gotB: Buffer[] = [];
      for (let o = 0, i = 0; o < recordsA.length; o += 7, i++) {
        a.send(recordsA.subarray(o, Math.min(o + 7, recordsA.length)));
        gotA.push(drain(a.user));
        if (i % 500 === 0) {
          const p = crypto.randomBytes(1000);
          wantB.push(p);
          b.send(b.sealer.seal(23, p));
          gotB.push(drain(b.user));
        }
      }
      assert.ok(Buffer.concat(gotA).equals(wantA), 'the fragmented stream is exact');
      assert.ok(Buffer.concat(gotB).equals(Buffer.concat(wantB)), 'the whole records in between are exact');
    } finally {
      for (const c of [a, b]) for (const fd of [c.peer, c.fd]) sys.close(fd);
    }
  });

  it('carries a half-received record through a snapshot into a new reader', () => {
    const a = connection();
    try {
      const want = crypto.randomBytes(10_000);
      const rec = a.sealer.seal(23, want);
      a.send(rec.subarray(0, 4321));
      assert.equal(drain(a.user).length, 0);
      const snap = a.user.snapshot();
      assert.equal(snap.inbox?.length, 4321);
      const next = new UserClient(a.fd, {
        suite,
        version: 'TLSv1.3',
        rx: { key: Buffer.from(snap.rx.key), iv: Buffer.from(snap.rx.iv), seq: snap.rx.seq },
        tx: { key: Buffer.from(snap.tx.key), iv: Buffer.from(snap.tx.iv), seq: snap.tx.seq },
        inbox: snap.inbox,
      });
      a.send(rec.subarray(4321));
      assert.ok(drain(next).equals(want));
    } finally {
      sys.close(a.peer);
      sys.close(a.fd);
    }
  });
});
