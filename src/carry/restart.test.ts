// What a restart makes of the fd store's descriptors: each told apart whatever their order, malformed entries refused, and unverifiable ones taken out and closed.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { createLogger } from '../core/log.js';
import { EAGAIN, SHUT_WR, sys } from '../kernel/libc.js';
import { Poller } from '../kernel/poller.js';
import { FdStore } from '../service/fd-store.js';
import { eventually } from '../testkit/proxy-process.js';
import { FakeNotifySocket } from '../testkit/notify-socket.js';
import { TCP_CLOSE, awaitTcpState, peerName, resetClose, tcpPair } from '../testkit/tcp-pair.js';
import { pipeInode, writeRecord } from './fd-store-record.js';
import { identify, restartFromStore } from './restart.js';
import type { ConnectionInfo } from '../core/connection.js';

const openFds = () => fs.readdirSync('/proc/self/fd').length;
const none = { clientEof: false, backendShut: false, backendEof: false, clientShut: false, closeNotifySent: false };

/** One stored connection as a proxy would have deposited it, and the far ends to watch. */
function storedConnection(id: string, mode: 'kernel' | 'user') {
  const client = tcpPair();
  const backend = tcpPair();
  const info: ConnectionInfo = {
    id,
    client: peerName(client.near),
    backend: peerName(backend.near),
    version: 'TLSv1.3',
    cipher: 'TLS_AES_128_GCM_SHA256',
    mode,
    startedAt: 1,
  };
  const c2b = sys.pipe();
  const b2c = sys.pipe();
  const pipes = mode === 'kernel' ? { c2b: pipeInode(c2b[0])!, b2c: pipeInode(b2c[0])! } : undefined;
  const memfd = writeRecord({ info, pipes, flags: none });
  const fds = [memfd, client.near, backend.near, ...(mode === 'kernel' ? [...c2b, ...b2c] : [])];
  if (mode === 'user') for (const fd of [...c2b, ...b2c]) sys.close(fd);
  return { info, fds, memfd, client, backend, c2b, b2c, farEnds: [client.far, backend.far] };
}

test('a stored connection is told apart whatever order its descriptors come back in', () => {
  const before = openFds();
  const s = storedConnection('c12', 'kernel');
  try {
    const shuffled = [s.fds[4]!, s.fds[2]!, s.fds[6]!, s.fds[0]!, s.fds[3]!, s.fds[1]!, s.fds[5]!];
    const found = identify('conn-c12', shuffled);
    assert.ok(!('reason' in found), 'reason' in found ? found.reason : '');
    assert.equal(found.carried.clientFd, s.client.near);
    assert.equal(found.carried.backendFd, s.backend.near);
    assert.deepEqual(found.stored, { memfd: s.memfd, pipes: { c2b: { r: s.c2b[0], w: s.c2b[1] }, b2c: { r: s.b2c[0], w: s.b2c[1] } } });
    assert.deepEqual(found.carried.pair.flags, none);
    assert.equal(found.record.info.id, 'c12');
  } finally {
    for (const fd of [...s.fds, ...s.farEnds]) sys.close(fd);
  }
  assert.equal(openFds(), before);
});

test('a stored connection is still told apart once its backend has answered the half-close and closed, and its client reset, while the proxy was down', () => {
  const s = storedConnection('c9', 'kernel');
  try {
    sys.shutdown(s.backend.near, SHUT_WR); // the client's close_notify, passed on before the crash
    sys.send(s.backend.far, Buffer.from('last bytes'), 10);
    sys.close(s.backend.far);
    resetClose(s.client.far);
    awaitTcpState(s.backend.near, TCP_CLOSE);
    awaitTcpState(s.client.near, TCP_CLOSE);
    const found = identify('conn-c9', s.fds);
    assert.ok(!('reason' in found), 'reason' in found ? found.reason : '');
    assert.equal(found.carried.clientFd, s.client.near);
    assert.equal(found.carried.backendFd, s.backend.near);
  } finally {
    for (const fd of s.fds) sys.close(fd);
  }
});

test('an entry that is not exactly one connection is refused with the reason', () => {
  const s = storedConnection('c3', 'kernel');
  const extra = sys.memfdCreate('something-else');
  try {
    const why = (name: string, fds: number[]) => {
      const r = identify(name, fds);
      return 'reason' in r ? r.reason : 'usable';
    };
    assert.equal(
      why(
        'conn-c3',
        s.fds.filter((fd) => fd !== s.c2b[1]),
      ),
      'a pipe end named in its record is missing',
    );
    assert.equal(why('conn-c3', [...s.fds, extra]), '1 descriptor(s) its record does not account for');
    assert.equal(why('conn-c4', s.fds), 'its record describes connection c3');
    assert.equal(why('conn-c3', s.fds.slice(1)), '0 connection records among its 6 descriptors (want 1)');
    assert.equal(
      why(
        'conn-c3',
        s.fds.filter((fd) => fd !== s.backend.near),
      ),
      `no socket connected to its backend ${s.info.backend}`,
    );
    assert.equal(why('stored', s.fds), '"stored" is not a connection\'s store name');
  } finally {
    for (const fd of [...s.fds, ...s.farEnds, extra]) sys.close(fd);
  }
});

test('a kernel-mode entry without kernel TLS, and a user-mode one, are taken out of the store and closed with a FIN; numbering continues after them', async () => {
  const notify = new FakeNotifySocket();
  const store = FdStore.at(notify.address);
  const poller = new Poller();
  const before = openFds();
  const kernel = storedConnection('c7', 'kernel');
  const user = storedConnection('c41', 'user');
  try {
    const adopted: string[] = [];
    const r = restartFromStore(
      new Map([
        ['conn-c7', kernel.fds],
        ['conn-c41', user.fds],
      ]),
      { store, resume: true, adopt: (info) => adopted.push(info.id), poller, log: createLogger('silent') },
    );
    assert.deepEqual(adopted, []);
    assert.deepEqual(r.failed, [{ id: 'c7', reason: `client fd ${kernel.client.near} has no kernel TLS state (ULP "")` }]);
    assert.deepEqual(
      r.notResumable.map((i) => i.id),
      ['c41'],
    );
    assert.equal(r.highestId, 41);
    await notify.waitFor((m) => m.fields.FDSTOREREMOVE === '1' && m.fields.FDNAME === 'conn-c7');
    await notify.waitFor((m) => m.fields.FDSTOREREMOVE === '1' && m.fields.FDNAME === 'conn-c41');
    // Every far end sees an orderly end of stream: EOF, not ECONNRESET (no kernel TLS here, so no alert either).
    const buf = Buffer.alloc(64);
    for (const far of [...kernel.farEnds, ...user.farEnds]) {
      let got = -EAGAIN;
      await eventually(() => {
        got = sys.recv(far, buf, buf.length, 0x40 /* MSG_DONTWAIT */);
        return got !== -EAGAIN;
      }, 5000);
      assert.equal(got, 0, `fd ${far}: ${got}`);
    }
    for (const far of [...kernel.farEnds, ...user.farEnds]) sys.close(far);
    await eventually(() => openFds() === before, 5000, 'every descriptor of both entries to be closed');
  } finally {
    poller.close();
    notify.close();
  }
});
