// The restore check tells a carried connection that ended in the bridge's hands (peer reset, or FIN after ours) from a socket that is not ours.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { AF_INET, MSG_DONTWAIT, SHUT_WR, SOCK_CLOEXEC, SOCK_STREAM, sys } from '../kernel/libc.js';
import { encodeSockaddr } from '../kernel/sockaddr.js';
import type { CarriedConnection } from '../relay/protocol.js';
import { TCP_CLOSE, awaitTcpState, peerName, resetClose, tcpPair } from '../testkit/tcp-pair.js';
import { checkPair } from './restore.js';
import type { HalfCloseFlags } from '../core/connection.js';

const openFds = () => fs.readdirSync('/proc/self/fd').length;

/** A user-mode connection as the bridge hands it back: its two proxy-side sockets, the far ends, and the carried record. */
function carried(flags: Partial<HalfCloseFlags> = {}) {
  const client = tcpPair();
  const backend = tcpPair();
  const key = () => ({ key: new Uint8Array(16), iv: new Uint8Array(12), seq: 0n });
  const c: CarriedConnection = {
    clientFd: client.near,
    backendFd: backend.near,
    pair: {
      info: {
        id: 'c1',
        client: peerName(client.near),
        backend: peerName(backend.near),
        version: 'TLSv1.3',
        cipher: 'TLS_AES_128_GCM_SHA256',
        mode: 'user',
        startedAt: 1,
      },
      bytesIn: 0,
      bytesOut: 0,
      flags: { clientEof: false, backendShut: false, backendEof: false, clientShut: false, closeNotifySent: false, ...flags },
    },
    user: { suite: 'TLS_AES_128_GCM_SHA256', version: 'TLSv1.3', tx: key(), rx: key() },
  };
  return { c, client, backend, fds: () => [client.near, client.far, backend.near, backend.far] };
}

/** Everything queued on a socket, up to EOF (0) or an error (-errno), never blocking. */
function drain(fd: number): { bytes: string; end: number } {
  const b = Buffer.alloc(4096);
  let bytes = '';
  for (;;) {
    const r = sys.recv(fd, b, b.length, MSG_DONTWAIT);
    if (r <= 0) return { bytes, end: r };
    bytes += b.subarray(0, r).toString();
  }
}

test('a connection whose backend answered the half-close with its last bytes and FIN while carried checks out, its bytes still to read', () => {
  const before = openFds();
  const x = carried({ clientEof: true, backendShut: true });
  try {
    sys.shutdown(x.backend.near, SHUT_WR); // the client's close_notify, passed on before the batch left
    sys.send(x.backend.far, Buffer.from('last bytes'), 10);
    sys.close(x.backend.far);
    awaitTcpState(x.backend.near, TCP_CLOSE);
    assert.equal(sys.getpeername(x.backend.near), undefined, 'getpeername says ENOTCONN now');
    assert.equal(checkPair(x.c), undefined);
    assert.deepEqual(drain(x.backend.near), { bytes: 'last bytes', end: 0 });
  } finally {
    for (const fd of x.fds()) sys.close(fd);
  }
  assert.equal(openFds(), before);
});

test('a connection whose backend reset it, or whose client answered our close_notify and FIN with its FIN, while carried checks out', () => {
  const x = carried({ backendEof: true, clientShut: true, closeNotifySent: true });
  try {
    sys.send(x.backend.far, Buffer.from('bytes before the reset'), 22);
    resetClose(x.backend.far);
    sys.shutdown(x.client.near, SHUT_WR);
    sys.close(x.client.far);
    awaitTcpState(x.backend.near, TCP_CLOSE);
    awaitTcpState(x.client.near, TCP_CLOSE);
    assert.equal(checkPair(x.c), undefined);
    assert.equal(drain(x.backend.near).bytes, 'bytes before the reset', 'the bytes sent before the reset are still there');
  } finally {
    for (const fd of x.fds()) sys.close(fd);
  }
});

test('under a carried fd number, a socket that never connected or one connected to another peer is refused, closed by its peer or not', () => {
  const x = carried();
  const other = tcpPair();
  const fresh = sys.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC);
  const bound = sys.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC);
  sys.bind(bound, encodeSockaddr({ host: '127.0.0.1', port: 0 }));
  try {
    assert.equal(checkPair(x.c), undefined, 'the real one checks out');
    assert.match(checkPair({ ...x.c, backendFd: fresh }) ?? '', new RegExp(`^backend fd ${fresh} is not connected$`));
    assert.match(checkPair({ ...x.c, clientFd: bound }) ?? '', new RegExp(`^client fd ${bound} is not connected$`));
    assert.match(checkPair({ ...x.c, backendFd: other.near }) ?? '', /^backend fd \d+ is connected to 127\.0\.0\.1:\d+, expected 127\.0\.0\.1:\d+$/);
    sys.shutdown(other.near, SHUT_WR);
    sys.close(other.far);
    awaitTcpState(other.near, TCP_CLOSE);
    assert.match(checkPair({ ...x.c, backendFd: other.near }) ?? '', /^backend fd \d+ is connected to 127\.0\.0\.1:\d+, expected 127\.0\.0\.1:\d+$/);
    assert.match(checkPair({ ...x.c, clientFd: other.near }) ?? '', /^client fd \d+ is connected to 127\.0\.0\.1:\d+, expected 127\.0\.0\.1:\d+$/);
  } finally {
    for (const fd of [...x.fds(), other.near, fresh, bound]) sys.close(fd);
  }
});
