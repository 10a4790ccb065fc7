// Sanity check for the kTLS lane: the kernel these tests run on really has kernel TLS.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import koffi from 'koffi';

const SOL_TCP = 6;
const TCP_ULP = 31;

const libc = koffi.load('libc.so.6');
const setsockopt = libc.func('int setsockopt(int, int, int, const void*, uint32_t)');

function fdOf(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  assert.ok(typeof fd === 'number' && fd >= 0, 'could not read the socket fd from node');
  return fd;
}

test('the guest kernel has kTLS and accepts TCP_ULP tls on a loopback socket', async () => {
  assert.ok(existsSync('/proc/net/tls_stat'), '/proc/net/tls_stat is missing: this kernel has no kTLS');
  assert.match(readFileSync('/proc/net/tls_stat', 'utf8'), /TlsCurrTxSw/);

  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  const accepted = once(server, 'connection') as Promise<[net.Socket]>;
  const client = net.connect(port, '127.0.0.1');
  try {
    await once(client, 'connect');
    const [peer] = await accepted;
    try {
      for (const [name, socket] of [
        ['client', client],
        ['server side', peer],
      ] as const) {
        const ulp = Buffer.from('tls');
        const rc = setsockopt(fdOf(socket), SOL_TCP, TCP_ULP, ulp, ulp.length) as number;
        const errno = rc === 0 ? 0 : koffi.errno();
        assert.equal(rc, 0, `setsockopt(TCP_ULP, "tls") on the ${name} socket failed, errno ${errno}`);
      }
    } finally {
      peer.destroy();
    }
  } finally {
    client.destroy();
    server.close();
  }
});
