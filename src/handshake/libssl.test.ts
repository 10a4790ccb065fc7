// The libssl handshake against node:tls clients: record by record, same secrets, tickets across contexts, bad input.

import { test, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import tls from 'node:tls';
import { once } from 'node:events';
import { LibsslServer } from './libssl.js';
import { HANDSHAKE_TEST_LIMIT, listenLibssl, opensslErrorQueued } from '../testkit/libssl-listen.js';
import { TicketKeyring } from './ticket-keys.js';
import { KeylogCollector } from './keylog.js';
import { makeCa, issue } from '../testkit/pki.js';
import { tempDir } from '../testkit/proxy-process.js';

const dir = tempDir('libssl');
after(() => fs.rmSync(dir, { recursive: true, force: true }));
/** Listeners and sockets of the current test, closed after it whatever happened (a failed assertion leaves none open). */
const opened: Array<() => void> = [];
afterEach(() => opened.splice(0).forEach((close) => close()));
const ca = await makeCa(dir);
const leaf = await issue(dir, { cn: 'localhost', dns: ['localhost'], ca });
const caPem = fs.readFileSync(ca.certFile);
const pair = () => ({ certificateChain: fs.readFileSync(leaf.certFile), key: fs.readFileSync(leaf.keyFile) });
const serverOptions = () => ({ pairs: [pair()], minVersion: 'TLSv1.3' as const });

/** A listener feeding `server`'s handshakes one record at a time (see listenLibssl). */
const listen = (server: LibsslServer, finishedWithData = false, onAccept = () => {}) =>
  listenLibssl(
    () => {
      const hs = server.accept();
      onAccept();
      return hs;
    },
    opened,
    { finishedWithData },
  );

function connect(port: number, extra: tls.ConnectionOptions = {}): { socket: tls.TLSSocket; keylog: Buffer[] } {
  const keylog: Buffer[] = [];
  const socket = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', ca: caPem, ...extra });
  socket.on('keylog', (line) => keylog.push(Buffer.from(line)));
  socket.on('error', () => {});
  opened.push(() => socket.destroy());
  return { socket, keylog };
}

/** The client's side of the secrets, parsed as the server's are (no strings). */
const clientSecrets = (lines: Buffer[]): KeylogCollector => {
  const c = new KeylogCollector();
  for (const line of lines) c.add(line);
  return c;
};

test(
  'a node:tls client completes a TLS 1.3 handshake fed one record at a time, and both sides hold the same traffic secrets',
  HANDSHAKE_TEST_LIMIT,
  async () => {
    const server = new LibsslServer(serverOptions());
    const l = await listen(server);
    const { socket, keylog } = connect(l.port);
    await once(socket, 'secureConnect');
    const s = await l.next();
    assert.equal(s.last.state, 'established');
    assert.equal(s.hs.version, 'TLSv1.3');
    assert.equal(s.hs.cipher, socket.getCipher().standardName);
    assert.equal(s.hs.servername, 'localhost');
    assert.equal(s.hs.resumed, false);
    assert.equal(s.unread, 0);
    const client = clientSecrets(keylog);
    assert.ok(client.clientTrafficSecret0 && client.serverTrafficSecret0);
    assert.deepEqual(s.hs.secrets.clientTrafficSecret0, client.clientTrafficSecret0);
    assert.deepEqual(s.hs.secrets.serverTrafficSecret0, client.serverTrafficSecret0);
    assert.equal(opensslErrorQueued(), 0, "OpenSSL's error queue is empty after a handshake");
    const held = s.hs.secrets.serverTrafficSecret0!;
    s.hs.free();
    assert.ok(
      held.every((b) => b === 0),
      'free() wipes the secrets it collected',
    );
    socket.destroy();
    l.close();
    server.free();
  },
);

test("nothing past the client's Finished is consumed: the record after it stays unread", HANDSHAKE_TEST_LIMIT, async () => {
  const server = new LibsslServer(serverOptions());
  const l = await listen(server, true);
  const { socket } = connect(l.port);
  socket.on('secureConnect', () => socket.write('after the handshake'));
  const s = await l.next();
  assert.equal(s.last.state, 'established');
  assert.equal(s.unread, 5 + 'after the handshake'.length + 1 + 16, 'the application record (data, type byte, tag) is left for the next stage');
  s.hs.free();
  socket.destroy();
  l.close();
  server.free();
});

test('a ticket one context issued resumes on another context given the same ticket keys, and not on one without them', HANDSHAKE_TEST_LIMIT, async () => {
  const keyring = () => new TicketKeyring({ keys: new Uint8Array(48).fill(7), encrypt: 0, lifetimeS: 300 });
  const first = new LibsslServer({ ...serverOptions(), tickets: keyring() });
  const second = new LibsslServer({ ...serverOptions(), tickets: keyring() });
  const other = new LibsslServer(serverOptions());
  const servers = [first, second, other];
  const ls = await Promise.all(servers.map((s) => listen(s)));
  const a = connect(ls[0]!.port);
  const [session] = (await once(a.socket, 'session')) as [Buffer];
  const sa = await ls[0]!.next();
  a.socket.destroy();
  for (const [i, expected] of [
    [1, true],
    [2, false],
  ] as const) {
    const b = connect(ls[i]!.port, { session });
    await once(b.socket, 'secureConnect');
    const sb = await ls[i]!.next();
    assert.equal(sb.last.state, 'established');
    assert.equal(sb.hs.resumed, expected);
    assert.equal(b.socket.isSessionReused(), expected);
    assert.equal(opensslErrorQueued(), 0, 'a ticket that does not decrypt leaves no error queued');
    sb.hs.free();
    b.socket.destroy();
  }
  sa.hs.free();
  ls.forEach((l) => l.close());
  servers.forEach((s) => s.free());
});

test('a client offering only TLS 1.2 to a TLS 1.3 server gets a protocol_version alert and a failure, not an exception', HANDSHAKE_TEST_LIMIT, async () => {
  const server = new LibsslServer(serverOptions());
  const l = await listen(server);
  const { socket } = connect(l.port, { maxVersion: 'TLSv1.2' });
  const s = await l.next();
  socket.destroy();
  assert.equal(s.last.state, 'failed');
  assert.deepEqual([...s.last.output.subarray(0, 1)], [21], 'an alert record');
  assert.equal(s.last.output.at(-1), 70, 'protocol_version');
  assert.match((s.last as { reason: string }).reason, /unsupported protocol/);
  s.hs.free();
  l.close();
  server.free();
});

test(
  "bytes that are not TLS fail the handshake and leave nothing in the thread's OpenSSL error queue (node:crypto shares it)",
  HANDSHAKE_TEST_LIMIT,
  async () => {
    const server = new LibsslServer(serverOptions());
    const hs = server.accept();
    const step = hs.feed(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    assert.equal(step.state, 'failed');
    assert.match((step as { reason: string }).reason, /wrong version number|http request/i);
    assert.equal(opensslErrorQueued(), 0);
    hs.free();
    // node:tls handshakes on this thread still succeed.
    const l = await listen(server);
    const { socket } = connect(l.port);
    await once(socket, 'secureConnect');
    (await l.next()).hs.free();
    socket.destroy();
    l.close();
    server.free();
  },
);

test('a context freed while a handshake is under way lets that handshake finish, its secrets collected', HANDSHAKE_TEST_LIMIT, async () => {
  const server = new LibsslServer(serverOptions());
  const l = await listen(server, false, () => server.free());
  const { socket, keylog } = connect(l.port);
  await once(socket, 'secureConnect');
  const s = await l.next();
  assert.equal(s.last.state, 'established');
  assert.deepEqual(s.hs.secrets.serverTrafficSecret0, clientSecrets(keylog).serverTrafficSecret0);
  s.hs.free();
  socket.destroy();
  l.close();
  assert.throws(() => server.accept(), /context freed/);
});

test('a context refuses a key that does not match its certificate, a chain certificate that does not parse, and cipher names OpenSSL does not know', () => {
  const otherKey = fs.readFileSync(ca.keyFile);
  const corrupt = Buffer.concat([fs.readFileSync(leaf.certFile), Buffer.from('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n')]);
  assert.throws(() => new LibsslServer({ ...serverOptions(), pairs: [{ ...pair(), certificateChain: corrupt }] }), /chain/);
  assert.equal(opensslErrorQueued(), 0);
  assert.throws(() => new LibsslServer({ ...serverOptions(), pairs: [{ ...pair(), key: otherKey }] }), /private key/);
  assert.throws(() => new LibsslServer({ ...serverOptions(), ciphers: 'TLS_AES_128_GCM_SHA256:NO-SUCH-CIPHER' }), /TLS 1.2 ciphers/);
  assert.equal(opensslErrorQueued(), 0);
});
