// The bridge link carries connections between processes: fds and state arrive intact, and malformed batches are refused without leaking fds.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import crypto from 'node:crypto';
import { describe, it } from 'node:test';
import { FdChannel } from '../kernel/fdpass.js';
import { SOCK_SEQPACKET, SOCK_STREAM, sys } from '../kernel/libc.js';
import type { CarriedConnection } from '../relay/protocol.js';
import { Link, encodeBatch } from './link.js';
import { TICKET_KEY_BYTES } from '../handshake/ticket-keys.js';
import { decodeDoorOrder, encodeDoorOrder, type DoorOrder } from './door.js';
import { STATE_SEALS, readStateMemfd, writeStateMemfd } from './state.js';

const openFds = () => fs.readdirSync('/proc/self/fd').length;

function carried(id: string, clientFd: number, backendFd: number): CarriedConnection {
  return {
    clientFd,
    backendFd,
    pair: {
      info: { id, client: '127.0.0.1:1', backend: '127.0.0.1:2', version: 'TLSv1.3', cipher: 'TLS_AES_128_GCM_SHA256', mode: 'user', startedAt: 1 },
      bytesIn: 10,
      bytesOut: 20,
      b2c: new Uint8Array([1, 2, 3]),
      flags: { clientEof: false, backendShut: false, backendEof: true, clientShut: false, closeNotifySent: false },
    },
    user: {
      suite: 'TLS_AES_128_GCM_SHA256',
      version: 'TLSv1.3',
      tx: { key: new Uint8Array(16).fill(7), iv: new Uint8Array(12).fill(8), seq: 2n ** 40n + 3n },
      rx: { key: new Uint8Array(16).fill(9), iv: new Uint8Array(12).fill(10), seq: 5n },
    },
  };
}

describe('the bridge link', () => {
  it('moves a batch of connections with their fds: the received fds are the same sockets, the state is exact', () => {
    const [a, b] = sys.socketpair(SOCK_SEQPACKET);
    const [c1, c1peer] = sys.socketpair(SOCK_STREAM);
    const [b1, b1peer] = sys.socketpair(SOCK_STREAM);
    try {
      const sent = carried('c7', c1, b1);
      assert.equal(
        new Link(a).sendBatch(
          { op: 'adopt', count: 1, frozenAt: 123, idleTimeoutMs: 0 },
          [sent],
          [{ id: 'c3', reason: 'gone', cause: 'completed', level: 'info' }],
        ),
        undefined,
      );
      sys.close(c1);
      sys.close(b1);
      const ev = new Link(b).receive();
      assert.equal(ev.kind, 'message');
      if (ev.kind !== 'message') return;
      assert.deepEqual(ev.header, { op: 'adopt', count: 1, frozenAt: 123, idleTimeoutMs: 0 });
      assert.deepEqual(ev.closed, [{ id: 'c3', reason: 'gone', cause: 'completed', level: 'info' }]);
      const [got] = ev.pairs;
      assert.ok(got);
      assert.equal(got.user?.tx.seq, 2n ** 40n + 3n);
      assert.deepEqual([...got.user!.rx.key], new Array(16).fill(9));
      assert.deepEqual([...got.pair.b2c!], [1, 2, 3]);
      assert.deepEqual(got.pair.info, sent.pair.info);
      // Bytes written on the received client fd come out of the original socket's peer.
      const msg = Buffer.from('through the moved fd');
      assert.equal(sys.send(got.clientFd, msg, msg.length), msg.length);
      const back = Buffer.alloc(64);
      assert.equal(back.subarray(0, sys.recv(c1peer, back, 64)).toString(), 'through the moved fd');
      assert.ok(sys.isCloexec(got.clientFd) && sys.isCloexec(got.backendFd), 'received fds are close-on-exec');
      sys.close(got.clientFd);
      sys.close(got.backendFd);
    } finally {
      for (const fd of [a, b, c1peer, b1peer]) sys.close(fd);
    }
  });

  it('hands the bridge its front door: the listening sockets alongside, the order with its private key and ticket keys intact in a memfd, the key never in the message text', () => {
    const [a, b] = sys.socketpair(SOCK_SEQPACKET);
    const [l1, l1peer] = sys.socketpair(SOCK_STREAM); // stands in for a listening socket
    const key = Buffer.from('-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n');
    const order: DoorOrder = {
      handshake: {
        listeners: [
          {
            name: 'site',
            groups: [{ names: ['example.test'], certs: [Buffer.from('cert')], keys: [Buffer.from(key)] }],
            alpn: ['h2'],
            backends: [{ host: '127.0.0.1', port: 8080 }],
            routes: [],
            proxyProtocol: 'off',
            transparent: false,
          },
        ],
        tlsBase: { minVersion: 'TLSv1.2' },
        policy: 'auto',
        kernelSuites: [],
        handshakeTimeoutMs: 10_000,
        backendConnectTimeoutMs: 5000,
        backendRetryMs: 1000,
        logLevel: 'info',
      },
      tickets: { keys: new Uint8Array(crypto.randomBytes(2 * TICKET_KEY_BYTES)), encrypt: 0, lifetimeS: 7200 },
      limits: { maxConnections: 100, maxConnectionsPerSource: 10, maxHandshakesPerSource: 5 },
    };
    try {
      const before = openFds();
      const encoded = encodeDoorOrder(order);
      assert.equal(new Link(a).sendServe(encoded, [l1]), undefined);
      encoded.fill(0);
      assert.equal(openFds(), before, 'the memfd is closed once sent');
      const ev = new Link(b).receive();
      assert.equal(ev.kind, 'message');
      if (ev.kind !== 'message' || !ev.serve) return assert.fail('no serve order');
      assert.deepEqual(ev.header, { op: 'serve', listeners: 1 });
      assert.equal(ev.serve.listenerFds.length, 1);
      const got = decodeDoorOrder(ev.serve.raw);
      ev.serve.raw.fill(0);
      assert.ok(Buffer.from(got.handshake.listeners[0]!.groups[0]!.keys[0]!).equals(key), 'the key arrives intact');
      assert.deepEqual(got.limits, order.limits);
      // The session ticket keys too, as bytes (a blob beside the JSON, never numbers or a string in it).
      assert.ok(
        got.tickets.keys instanceof Uint8Array && Buffer.from(got.tickets.keys).equals(Buffer.from(order.tickets.keys)),
        'the ticket keys arrive intact',
      );
      assert.deepEqual([got.tickets.encrypt, got.tickets.lifetimeS], [0, 7200]);
      assert.deepEqual(got.handshake.listeners[0]!.backends, [{ host: '127.0.0.1', port: 8080 }]);
      // The received descriptor is the same socket.
      sys.write(ev.serve.listenerFds[0]!, Buffer.from('x'), 1);
      const buf = Buffer.alloc(1);
      assert.equal(sys.read(l1peer, buf, 1), 1);
      sys.close(ev.serve.listenerFds[0]!);
      assert.equal(openFds(), before, 'nothing left open but what the test opened');
    } finally {
      for (const fd of [a, b, l1, l1peer]) sys.close(fd);
    }
  });

  it('refuses a batch whose descriptors do not match its header, closing every fd that came with it', () => {
    const [a, b] = sys.socketpair(SOCK_SEQPACKET);
    const [x, y] = sys.socketpair(SOCK_STREAM);
    try {
      const before = openFds();
      // Claims two connections but carries a single fd.
      assert.equal(new FdChannel(a).send(Buffer.from(JSON.stringify({ op: 'returned', count: 2, frozenAt: 0, more: false, intoBridgeMs: 0 })), [x]), 0);
      const ev = new Link(b).receive();
      assert.equal(ev.kind, 'closed');
      assert.match(ev.kind === 'closed' ? ev.reason : '', /2 connection\(s\) came with 1 descriptor/);
      assert.equal(openFds(), before, 'the received duplicate was closed');
    } finally {
      for (const fd of [a, b, x, y]) sys.close(fd);
    }
  });

  it('refuses a batch whose memfd is not a batch, without leaking the connection fds', () => {
    const [a, b] = sys.socketpair(SOCK_SEQPACKET);
    const [x, y] = sys.socketpair(SOCK_STREAM);
    const memfd = sys.memfdCreateSealable('not-a-batch');
    try {
      sys.write(memfd, Buffer.from('garbage'), 7);
      sys.addSeals(memfd, STATE_SEALS);
      const before = openFds();
      const header = { op: 'adopt', count: 1, frozenAt: 0, idleTimeoutMs: 0 };
      assert.equal(new FdChannel(a).send(Buffer.from(JSON.stringify(header)), [memfd, x, y]), 0);
      const ev = new Link(b).receive();
      assert.equal(ev.kind, 'closed');
      assert.match(ev.kind === 'closed' ? ev.reason : '', /IRONSOCKET-BATCH/);
      assert.equal(openFds(), before);
    } finally {
      for (const fd of [a, b, x, y, memfd]) sys.close(fd);
    }
  });

  it('sends a batch in a memfd sealed against writing, growing, shrinking and unsealing', () => {
    const [a, b] = sys.socketpair(SOCK_SEQPACKET);
    const [x, y] = sys.socketpair(SOCK_STREAM);
    try {
      assert.equal(new Link(a).sendBatch({ op: 'adopt', count: 1, frozenAt: 0, idleTimeoutMs: 0 }, [carried('c1', x, y)]), undefined);
      const m = new FdChannel(b).receive();
      assert.equal(m.kind, 'message');
      const fds = m.kind === 'message' ? m.fds : [];
      assert.equal(fds.length, 3);
      assert.equal(sys.getSeals(fds[0]!), STATE_SEALS);
      assert.equal(sys.ftruncate(fds[0]!, 0) < 0, true, 'a sealed memfd cannot be emptied or changed');
      for (const fd of fds) sys.close(fd);
    } finally {
      for (const fd of [a, b, x, y]) sys.close(fd);
    }
  });

  it('refuses a well-formed batch whose memfd is not sealed, without leaking the connection fds', () => {
    const [a, b] = sys.socketpair(SOCK_SEQPACKET);
    const [x, y] = sys.socketpair(SOCK_STREAM);
    const memfd = sys.memfdCreateSealable('unsealed');
    try {
      const body = encodeBatch([carried('c1', -1, -1)], []);
      sys.write(memfd, body, body.length);
      const before = openFds();
      const header = { op: 'adopt', count: 1, frozenAt: 0, idleTimeoutMs: 0 };
      assert.equal(new FdChannel(a).send(Buffer.from(JSON.stringify(header)), [memfd, x, y]), 0);
      const ev = new Link(b).receive();
      assert.equal(ev.kind, 'closed');
      assert.match(ev.kind === 'closed' ? ev.reason : '', /not sealed/);
      assert.equal(openFds(), before);
    } finally {
      for (const fd of [a, b, x, y, memfd]) sys.close(fd);
    }
  });

  it('seals the hand-off memfd it writes, reads it back, and refuses an unsealed one', () => {
    const sealed = writeStateMemfd(Buffer.from('hand-off'));
    assert.equal(sys.getSeals(sealed), STATE_SEALS);
    assert.equal(readStateMemfd(sealed).toString(), 'hand-off');
    const plain = sys.memfdCreateSealable('unsealed-handoff');
    try {
      sys.write(plain, Buffer.from('hand-off'), 8);
      assert.throws(() => readStateMemfd(plain), /not sealed/);
    } finally {
      sys.close(plain);
    }
  });

  it('reports the other end closing, and says nothing while no message is waiting', () => {
    const [a, b] = sys.socketpair(SOCK_SEQPACKET);
    const link = new Link(b);
    assert.equal(link.receive().kind, 'again');
    sys.close(a);
    assert.equal(link.receive().kind, 'closed');
    sys.close(b);
  });
});
