// The userspace record reader: records that arrive in pieces, interleaved across connections, or cut by an upgrade come out exact; replies it owes are bounded.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { describe, it } from 'node:test';
import { EAGAIN, SOCK_NONBLOCK, SOCK_STREAM, SOL_SOCKET, sys } from '../kernel/libc.js';
import { RecordProtection } from '../record/aead.js';
import { tls13NextTrafficSecret, tls13TrafficKeys } from '../record/keys.js';
import { suiteByName } from '../record/suites.js';
import { UserClient } from './user-client.js';

const suite = suiteByName('TLS_AES_128_GCM_SHA256', 'TLSv1.3')!;

/** A connected pair: the proxy's UserClient on one end, the "client" sealing records on the other. */
function connection(opts: { secrets?: boolean } = {}) {
  const [peer, fd] = sys.socketpair(SOCK_STREAM | SOCK_NONBLOCK);
  const secrets = opts.secrets ? { client: crypto.randomBytes(32), server: crypto.randomBytes(32) } : undefined;
  const key = crypto.randomBytes(16);
  const iv = crypto.randomBytes(12);
  const txKey = crypto.randomBytes(16);
  const txIv = crypto.randomBytes(12);
  const sealer = new RecordProtection(suite, Buffer.from(key), Buffer.from(iv), 0n);
  /** The peer's view of what the UserClient sends. */
  const opener = new RecordProtection(suite, Buffer.from(txKey), Buffer.from(txIv), 0n);
  const user = new UserClient(fd, {
    suite,
    version: 'TLSv1.3',
    rx: { key: Buffer.from(key), iv: Buffer.from(iv), seq: 0n },
    tx: { key: Buffer.from(txKey), iv: Buffer.from(txIv), seq: 0n },
    secrets: secrets && { client: Buffer.from(secrets.client), server: Buffer.from(secrets.server) },
  });
  const send = (b: Buffer) => assert.equal(sys.send(peer, b, b.length), b.length);
  return { peer, fd, sealer, opener, user, send, key, iv, secrets };
}

/** Receives everything the UserClient sent and opens it as records (whole records only: the rest stays in `pending`). */
function peerReceive(c: ReturnType<typeof connection>, state: { pending: Buffer }): Buffer[] {
  const buf = Buffer.alloc(1 << 20);
  for (;;) {
    const r = sys.recv(c.peer, buf, buf.length);
    if (r <= 0) break;
    state.pending = Buffer.concat([state.pending, buf.subarray(0, r)]);
  }
  const out: Buffer[] = [];
  while (state.pending.length >= 5 && state.pending.length >= 5 + state.pending.readUInt16BE(3)) {
    const n = 5 + state.pending.readUInt16BE(3);
    const opened = c.opener.open(state.pending.subarray(0, 5), state.pending.subarray(5, n));
    assert.equal(opened.type, 23);
    out.push(opened.plaintext);
    state.pending = state.pending.subarray(n);
  }
  return out;
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

  it("keeps its own copy of a record larger than the reader's buffer while other connections receive in between", () => {
    const a = connection();
    const b = connection();
    try {
      const want = crypto.randomBytes(16_384);
      a.send(a.sealer.seal(23, want));
      const small = Buffer.alloc(1000);
      const got: Buffer[] = [];
      for (let i = 0; ; i++) {
        const r = a.user.read(small);
        if (r.kind === 'again') break;
        assert.equal(r.kind, 'data');
        if (r.kind === 'data') got.push(Buffer.from(small.subarray(0, r.n)));
        // Another connection of this thread receives (and decrypts in place) a record in between.
        const other = crypto.randomBytes(16_000 + i);
        b.send(b.sealer.seal(23, other));
        assert.ok(drain(b.user).equals(other));
      }
      assert.ok(Buffer.concat(got).equals(want));
    } finally {
      for (const c of [a, b]) for (const fd of [c.peer, c.fd]) sys.close(fd);
    }
  });

  it('keeps the unsent part of a sealed record while the socket is full, across writes by other connections', () => {
    const a = connection();
    const b = connection();
    try {
      for (const c of [a, b]) {
        sys.setsockoptInt(c.fd, SOL_SOCKET, 7 /* SO_SNDBUF */, 4096);
        sys.setsockoptInt(c.peer, SOL_SOCKET, 8 /* SO_RCVBUF */, 4096);
      }
      const want = crypto.randomBytes(300_000);
      const peerA = { pending: Buffer.alloc(0) };
      const peerB = { pending: Buffer.alloc(0) };
      const gotA: Buffer[] = [];
      let sentB = Buffer.alloc(0);
      const gotB: Buffer[] = [];
      let off = 0;
      let blocked = 0;
      while (off < want.length || a.user.pendingOutput) {
        const w = off < want.length ? a.user.write(want.subarray(off), want.length - off) : a.user.flush();
        if (w === -EAGAIN || (w >= 0 && a.user.pendingOutput)) blocked++;
        else assert.ok(w >= 0, `write: ${w}`);
        if (w > 0 && off < want.length) off += w;
        // Another connection of this thread seals into the shared output buffer meanwhile.
        const p = crypto.randomBytes(16_384);
        const wb = b.user.write(p, p.length);
        if (wb > 0) sentB = Buffer.concat([sentB, p.subarray(0, wb)]);
        gotB.push(...peerReceive(b, peerB));
        gotA.push(...peerReceive(a, peerA));
      }
      while (b.user.pendingOutput) {
        b.user.flush();
        gotB.push(...peerReceive(b, peerB));
      }
      gotA.push(...peerReceive(a, peerA));
      gotB.push(...peerReceive(b, peerB));
      assert.ok(blocked > 0, 'the socket filled up at least once');
      assert.ok(Buffer.concat(gotA).equals(want), 'the full stream arrives intact');
      assert.ok(Buffer.concat(gotB).equals(sentB), 'the interleaved stream arrives intact');
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

  it('a client that sends KeyUpdates without reading gets one reply queued at most: reading pauses until it has gone', () => {
    const c = connection({ secrets: true });
    try {
      for (const fd of [c.fd, c.peer]) for (const opt of [7 /* SO_SNDBUF */, 8 /* SO_RCVBUF */]) sys.setsockoptInt(fd, SOL_SOCKET, opt, 4096);
      // Our sending side fills with data first (the client does not read); data alone does not pause reading.
      const chunk = Buffer.alloc(16_384, 1);
      while (!c.user.pendingOutput) c.user.write(chunk, chunk.length);
      assert.equal(c.user.inputPaused, false, 'queued data does not pause reading');
      const KEY_UPDATE_REQUESTED = Buffer.from([24, 0, 0, 1, 1]);
      // Each KeyUpdate is sealed under the key the one before it installed (RFC 8446 §7.2).
      let secret: Buffer = c.secrets!.client;
      for (let i = 0; i < 3; i++) {
        c.send(c.sealer.seal(22, KEY_UPDATE_REQUESTED));
        secret = tls13NextTrafficSecret(suite, secret);
        const k = tls13TrafficKeys(suite, secret);
        c.sealer.rekey(k.key, k.iv);
      }
      const buf = Buffer.alloc(70_000);
      const first = c.user.read(buf);
      assert.equal(first.kind, 'skip');
      assert.equal(c.user.inputPaused, true, 'a reply the socket would not take pauses reading');
      const queued = c.user.snapshot().out!.length;
      assert.ok(queued <= 5 + 16_384 + 16 + 1 + 5 + 5 + 16 + 1, `at most one data record and one reply are queued (${queued} bytes)`);
      // The loop does not read a paused client (pair.ts): the other two wait in the socket until the client reads.
      const sink = Buffer.alloc(1 << 20);
      for (let answered = 1; answered <= 3; answered++) {
        while (c.user.pendingOutput) {
          while (sys.recv(c.peer, sink, sink.length) > 0);
          c.user.flush();
        }
        assert.equal(c.user.inputPaused, false, `reply ${answered} has gone: reading resumes`);
        const r = c.user.read(buf);
        assert.equal(r.kind, answered < 3 ? 'skip' : 'again', `read after reply ${answered}`);
      }
    } finally {
      sys.close(c.peer);
      sys.close(c.fd);
    }
  });

  it('a KeyUpdate received in part goes through a snapshot into a new reader, which completes it', () => {
    const c = connection({ secrets: true });
    try {
      c.send(c.sealer.seal(22, Buffer.from([24, 0])));
      const buf = Buffer.alloc(70_000);
      assert.equal(c.user.read(buf).kind, 'skip', 'the first fragment is taken');
      const snap = c.user.snapshot();
      assert.deepEqual([...snap.handshake!], [24, 0]);
      const next = new UserClient(c.fd, {
        suite,
        version: 'TLSv1.3',
        rx: { key: Buffer.from(snap.rx.key), iv: Buffer.from(snap.rx.iv), seq: snap.rx.seq },
        tx: { key: Buffer.from(snap.tx.key), iv: Buffer.from(snap.tx.iv), seq: snap.tx.seq },
        secrets: { client: Buffer.from(snap.secrets!.client), server: Buffer.from(snap.secrets!.server) },
        handshake: snap.handshake,
      });
      c.send(c.sealer.seal(22, Buffer.from([0, 1, 0])));
      const r = next.read(buf);
      assert.equal(r.kind, 'skip');
      assert.match((r as { note?: string }).note ?? '', /KeyUpdate \(update_not_requested\): new receive key/);
      // Data under the client's next key now opens.
      const k = tls13TrafficKeys(suite, tls13NextTrafficSecret(suite, c.secrets!.client));
      c.sealer.rekey(k.key, k.iv);
      c.send(c.sealer.seal(23, Buffer.from('after')));
      const d = next.read(buf);
      assert.equal(d.kind, 'data');
      assert.equal(buf.subarray(0, (d as { n: number }).n).toString(), 'after');
    } finally {
      sys.close(c.peer);
      sys.close(c.fd);
    }
  });
});
