// The kernel-mode relay path with the fd store, run on plain sockets: own pipes deposited with the connection, bytes in them delivered after a crash, half-close state recorded, removal before close.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { test } from 'node:test';
import { SHUT_WR, SOCK_NONBLOCK, SOCK_STREAM, SOL_SOCKET, sys } from '../kernel/libc.js';
import { EPOLLIN, EPOLLOUT } from '../kernel/poller.js';
import { readRecord } from './fd-store-record.js';
import { NotifyStore } from '../service/notify-store.js';
import { FdStore } from '../service/fd-store.js';
import { FakeNotifySocket } from '../testkit/notify-socket.js';
import { PlainSplicingClient } from '../testkit/splicing-client.js';
import { Pair, type PairHost } from '../relay/pair.js';
import { PipePool } from '../relay/pipes.js';
import { StoredPairs } from './stored-pairs.js';
import type { ConnectionInfo } from '../core/connection.js';

const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
const openFds = () => fs.readdirSync('/proc/self/fd').length;
const info: ConnectionInfo = { id: 'c9', client: 'a', backend: 'b', version: 'TLSv1.3', cipher: 'x', mode: 'kernel', startedAt: 0 };

/** Client and backend socket pairs; the backend's buffers small, so bytes park in the c2b pipe. */
function sockets() {
  const [clientApp, clientProxy] = sys.socketpair(SOCK_STREAM | SOCK_NONBLOCK);
  const [backendProxy, backendApp] = sys.socketpair(SOCK_STREAM | SOCK_NONBLOCK);
  for (const fd of [backendProxy, backendApp]) for (const opt of [SO_SNDBUF, SO_RCVBUF]) sys.setsockoptInt(fd, SOL_SOCKET, opt, 4096);
  return { clientApp, clientProxy, backendProxy, backendApp, all: [clientApp, clientProxy, backendProxy, backendApp] };
}

function drain(fd: number, into: Buffer[]): void {
  for (;;) {
    const b = Buffer.alloc(65536);
    const r = sys.recv(fd, b, b.length);
    if (r <= 0) return;
    into.push(b.subarray(0, r));
  }
}

/** Runs `body` with a fake store, a StoredPairs on it and fresh sockets; checks that nothing stays open after. */
async function withStore(body: (t: { notify: FakeNotifySocket; stored: StoredPairs; s: ReturnType<typeof sockets> }) => Promise<void>): Promise<void> {
  const before = openFds();
  const notify = new FakeNotifySocket();
  const stored = new StoredPairs(FdStore.at(notify.address), (level, id, msg) => assert.fail(`${level} ${id}: ${msg}`));
  const s = sockets();
  try {
    await body({ notify, stored, s });
  } finally {
    for (const fd of s.all) sys.close(fd);
    notify.close();
  }
  assert.equal(openFds(), before);
}

test('a stored kernel-mode pair splices through its own pipes only, and bytes parked in them at a crash reach the backend after a restart, in order', () =>
  withStore(async ({ notify, stored, s }) => {
    const pool = new PipePool();
    pool.take = () => assert.fail('a pair with its own pipes took one from the pool');
    const host: PairHost = { interest: () => {}, closed: (_p, reason) => assert.fail(`closed: ${reason}`), log: () => {}, pipes: pool };
    const d = stored.deposit(info, s.clientProxy, s.backendProxy)!;
    assert.ok(d.own && d.fds.pipes);
    const entries = await notify.waitForStore((e) => e.get('conn-c9') === 7);
    assert.equal(entries.size, 1);
    const scratch = Buffer.alloc(65536);
    const up = crypto.randomBytes(1 << 20);
    let sent = 0;
    const first = new Pair(info, new PlainSplicingClient(s.clientProxy), s.backendProxy, host, undefined, d.own);
    first.start();
    for (let i = 0; i < 200; i++) {
      const w = sys.send(s.clientApp, up.subarray(sent), up.length - sent);
      if (w > 0) sent += w;
      first.onClient(EPOLLIN, scratch);
    }
    const parked = sys.readable(d.fds.pipes.c2b.r);
    assert.ok(parked > 0, "bytes wait in the connection's own pipe");
    // The crash: the first relay is gone without a word; a restart finds the pipe as it was.
    const held = stored.adopted(d.fds)!;
    assert.deepEqual(held.held, { c2b: parked, b2c: 0 });
    const second = new Pair(info, new PlainSplicingClient(s.clientProxy), s.backendProxy, host, { info, bytesIn: 0, bytesOut: 0, flags: first.flags }, held);
    second.start();
    const atBackend: Buffer[] = [];
    for (let i = 0; i < 2000 && Buffer.concat(atBackend).length < up.length; i++) {
      if (sent < up.length) {
        const w = sys.send(s.clientApp, up.subarray(sent), up.length - sent);
        if (w > 0) sent += w;
      }
      drain(s.backendApp, atBackend);
      second.onBackend(EPOLLOUT, scratch);
      second.onClient(EPOLLIN, scratch);
    }
    assert.ok(Buffer.concat(atBackend).equals(up), 'every byte, in order, across the "crash"');
    stored.remove(info.id, d.fds, [s.clientProxy, s.backendProxy]);
    await notify.waitForStore((e) => e.size === 0);
  }));

test('the record follows the half-close state, and an upgrade re-deposit puts carried bytes back into fresh pipes', () =>
  withStore(async ({ notify, stored, s }) => {
    const carried = new Uint8Array(crypto.randomBytes(3000));
    const snapshot = {
      info,
      bytesIn: 5,
      bytesOut: 7,
      c2b: carried,
      flags: { clientEof: false, backendShut: false, backendEof: false, clientShut: false, closeNotifySent: false },
    };
    const d = stored.deposit(info, s.clientProxy, s.backendProxy, snapshot)!;
    await notify.waitFor((m) => m.fields.FDSTOREREMOVE === '1' && m.fields.FDNAME === 'conn-c9'); // the old entry goes first
    assert.equal(d.restored?.c2b, undefined, 'the carried bytes left the snapshot');
    assert.deepEqual(d.own?.held, { c2b: 3000, b2c: 0 });
    const inPipe = PipePool.readOut({ pipe: d.fds.pipes!.c2b, len: 3000 });
    assert.ok(inPipe.equals(Buffer.from(carried)), '... and sit in the new c2b pipe');
    const host: PairHost = {
      interest: () => {},
      closed: () => {},
      log: () => {},
      flagsChanged: (p) => stored.flags(info.id, d.fds, p.flags),
    };
    const pair = new Pair(info, new PlainSplicingClient(s.clientProxy), s.backendProxy, host, d.restored, { c2b: d.own!.c2b, b2c: d.own!.b2c });
    pair.start();
    sys.shutdown(s.backendApp, SHUT_WR); // the backend is done: close_notify and FIN go to the client
    pair.onBackend(EPOLLIN, Buffer.alloc(65536));
    const flags = readRecord(d.fds.memfd).flags;
    assert.deepEqual(flags, { clientEof: false, backendShut: false, backendEof: true, clientShut: true, closeNotifySent: true });
    stored.remove(info.id, d.fds, [s.clientProxy, s.backendProxy]);
    await notify.waitForStore((e) => e.size === 0);
  }));

test("with the store not reading, deposits and removals wait their turn instead of blocking the relay, and a removed connection's peers see the close at once", async () => {
  const before = openFds();
  const store = new NotifyStore(); // read only when this test says so: its datagram queue fills up
  const logs: string[] = [];
  const stored = new StoredPairs(FdStore.at(store.address), (level, id, msg) => logs.push(`${level} ${id}: ${msg}`));
  const conns = Array.from({ length: 40 }, (_, i) => ({ info: { ...info, id: `c${i + 1}` }, s: sockets() }));
  try {
    const deposited = conns.map((c) => stored.deposit(c.info, c.s.clientProxy, c.s.backendProxy)!);
    assert.ok(
      deposited.every((d) => d !== undefined),
      'every connection is taken, queued or not',
    );
    assert.ok(stored.pending > 0, 'the store stopped taking messages, and the rest wait');
    assert.match(logs.join('\n'), /queue is full/);
    store.receive();
    const inStore = store.entries();
    assert.ok(inStore.size > 0 && inStore.size < conns.length, `some went at once (${inStore.size}), not all`);
    const queuedId = [...conns].reverse().find((c) => !inStore.has(`conn-${c.info.id}`))!;
    const storedId = conns.find((c) => inStore.has(`conn-${c.info.id}`))!;

    // The first is in the store, its removal has to wait behind the queued deposits: its sockets are shut down.
    const i = conns.indexOf(storedId);
    stored.remove(storedId.info.id, deposited[i]!.fds, [storedId.s.clientProxy, storedId.s.backendProxy]);
    assert.equal(sys.recv(storedId.s.clientApp, Buffer.alloc(16), 16), 0, 'the client sees the close although the store still holds its socket');
    assert.equal(sys.recv(storedId.s.backendApp, Buffer.alloc(16), 16), 0, 'so does the backend');
    // The second never reached the store: its deposit is dropped from the queue, nothing to shut down.
    const j = conns.indexOf(queuedId);
    const waiting = stored.pending;
    stored.remove(queuedId.info.id, deposited[j]!.fds, [queuedId.s.clientProxy, queuedId.s.backendProxy]);
    assert.equal(stored.pending, waiting - 1, 'its queued deposit is gone');
    assert.ok(sys.recv(queuedId.s.clientApp, Buffer.alloc(16), 16) < 0, 'its sockets were left alone (the caller closes them)');

    for (let n = 0; n < 100 && stored.pending > 0; n++) {
      store.receive();
      stored.flush();
    }
    store.receive();
    assert.equal(stored.pending, 0);
    const want = conns.filter((c) => c !== storedId && c !== queuedId).map((c) => `conn-${c.info.id}`);
    assert.deepEqual([...store.entries().keys()].sort(), want.sort(), 'in the end the store holds exactly the live connections');
    for (const k of store.entries().values()) assert.equal(k, 7);
    conns.forEach((c, k) => {
      if (c !== storedId && c !== queuedId) stored.remove(c.info.id, deposited[k]!.fds, [c.s.clientProxy, c.s.backendProxy]);
    });
    for (let n = 0; n < 100 && (stored.pending > 0 || store.entries().size > 0); n++) {
      store.receive();
      stored.flush();
    }
    assert.equal(store.entries().size, 0, 'every removal arrived');
  } finally {
    for (const c of conns) for (const fd of c.s.all) sys.close(fd);
    store.close();
  }
  assert.equal(openFds(), before);
});
