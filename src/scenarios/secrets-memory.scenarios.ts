// Proves a session's secrets leave the proxy's memory once it no longer needs them: user mode when the session closes, kernel mode once the kernel has the keys.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { test } from 'node:test';
import { KeylogCollector } from '../handshake/keylog.js';
import { deriveDirectionKeys, type SessionSecrets } from '../record/keys.js';
import { suiteByName } from '../record/suites.js';
import { scanMemory, scanUntilGone, type Found, type Needle } from '../testkit/memory-scan.js';
import { scriptedProxy } from '../testkit/scripted-proxy.js';
import { echo } from '../testkit/tls-echo.js';
import { modeArgs, type Mode } from './real-clients.scenarios.js';

/** How long a secret may outlive its use: less than it takes V8 to collect garbage on its own (seconds), so nothing here waits for a GC. */
const BOUND_MS = 3_000;

interface Session {
  socket: tls.TLSSocket;
  /** The session's secrets, and the record keys derived from them, as the proxy could hold them. */
  needles: Needle[];
}

/** Every secret a client logs, raw and in hex. */
function logNeedles(socket: tls.TLSSocket, needles: Needle[], keylog?: KeylogCollector): void {
  socket.on('keylog', (line: Buffer) => {
    const label = line.toString('latin1', 0, line.indexOf(0x20));
    const secret = Buffer.from(line.toString('latin1').trim().split(' ')[2]!, 'hex');
    needles.push({ name: `${label} (raw)`, bytes: secret }, { name: `${label} (hex)`, bytes: Buffer.from(secret.toString('hex')) });
    keylog?.add(Buffer.from(line));
  });
}

/**
 * A client whose Finished does not authenticate (its last byte flipped): the proxy has derived the session's
 * secrets when its handshake fails. Resolves with them once the proxy has closed the connection.
 */
async function failedHandshake(port: number, version: 'TLSv1.2' | 'TLSv1.3'): Promise<Needle[]> {
  const needles: Needle[] = [];
  const wire = sniffingTransport(port, true);
  const c = tls.connect({ socket: wire.transport, rejectUnauthorized: false, minVersion: version, maxVersion: version });
  logNeedles(c, needles);
  c.on('error', () => {});
  await new Promise((resolve) => c.once('close', resolve));
  assert.ok(
    needles.some((n) => /TRAFFIC_SECRET_0|CLIENT_RANDOM/.test(n.name)),
    'the client derived the session secrets before the proxy refused its Finished',
  );
  return needles;
}

/** A TLS client through the proxy that logs its keys: every secret it logged, its hex, and the derived record keys. */
async function session(port: number, version: 'TLSv1.2' | 'TLSv1.3'): Promise<Session> {
  const keylog = new KeylogCollector();
  const needles: Needle[] = [];
  const wire = sniffingTransport(port);
  const socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const c = tls.connect({ socket: wire.transport, rejectUnauthorized: false, minVersion: version, maxVersion: version });
    logNeedles(c, needles, keylog);
    c.once('secureConnect', () => resolve(c));
    c.once('error', reject);
  });
  assert.equal(await echo(socket, `hello over ${version}`), `hello over ${version}`);
  const suite = suiteByName(socket.getCipher().name, version);
  assert.ok(suite, `suite ${socket.getCipher().name}`);
  let secrets: SessionSecrets;
  if (version === 'TLSv1.3') {
    secrets = { version, clientTrafficSecret: keylog.clientTrafficSecret0!, serverTrafficSecret: keylog.serverTrafficSecret0! };
  } else {
    const serverRandom = wire.serverRandom();
    assert.ok(serverRandom, 'the ServerHello was seen');
    secrets = { version, masterSecret: keylog.masterSecret!, clientRandom: keylog.clientRandom!, serverRandom };
  }
  const keys = deriveDirectionKeys(suite, secrets, 'client');
  needles.push({ name: 'client write key', bytes: keys.tx.key }, { name: 'server write key', bytes: keys.rx.key });
  // A TLS 1.2 AES-GCM write IV is a 4-byte salt: any 4 bytes turn up by chance in a few percent of scans of a
  // process this size (one position in 2^32; it maps hundreds of MiB). The keys beside it are what the scan is about.
  for (const [name, iv] of [
    ['client write iv', keys.tx.iv],
    ['server write iv', keys.rx.iv],
  ] as const) {
    if (iv.length >= 8) needles.push({ name, bytes: iv });
  }
  return { socket, needles };
}

/**
 * A TCP connection to the proxy as a Duplex that keeps the first bytes the server sent: its ServerHello, whose random
 * the TLS 1.2 key block needs (node:tls does not tell it). With `corrupt`, the last byte of every write after the
 * ClientHello is flipped: the client's Finished (or the record before it) does not authenticate.
 */
function sniffingTransport(port: number, corrupt = false): { transport: Duplex; serverRandom(): Buffer | undefined } {
  const raw = net.connect(port, '127.0.0.1');
  let first = Buffer.alloc(0);
  let writes = 0;
  const transport = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      if (corrupt && writes++ > 0) {
        chunk = Buffer.from(chunk);
        chunk[chunk.length - 1]! ^= 0xff;
      }
      raw.write(chunk, () => cb());
    },
    final(cb) {
      raw.end();
      cb();
    },
    destroy(err, cb) {
      raw.destroy();
      cb(err);
    },
  });
  raw.on('data', (d: Buffer) => {
    if (first.length < 64) first = Buffer.concat([first, d]);
    transport.push(d);
  });
  raw.on('end', () => transport.push(null));
  raw.on('close', () => transport.destroy());
  raw.on('error', (e) => transport.destroy(e));
  // Record header (5), handshake header (4), legacy_version (2), then the 32-byte random.
  return { transport, serverRandom: () => (first.length >= 43 && first[0] === 22 && first[5] === 2 ? first.subarray(11, 43) : undefined) };
}

function describeFound(found: Found[]): string {
  return found.map((f) => `${f.name} at ${f.address} (${f.mapping || 'anonymous'})`).join('\n  ');
}

function connected(c: tls.TLSSocket): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    c.once('secureConnect', () => resolve(c));
    c.once('error', reject);
  });
}

/** Closes the client's end (close_notify, then FIN) and waits for the proxy's. */
function close(s: tls.TLSSocket): Promise<void> {
  return new Promise((resolve) => {
    s.once('close', () => resolve());
    s.end();
  });
}

export function secretsMemoryScenarios(mode: Mode): void {
  const { proxy } = scriptedProxy(modeArgs(mode));

  test(`the scanner ${mode === 'user' ? "finds a relaying session's keys in the proxy's memory" : "reads the proxy's memory (it finds the certificate)"}, so finding none means something (${mode} mode)`, async () => {
    if (mode === 'kernel') {
      // In kernel mode no session key may be there to find: prove the scanner reads the proxy with what it must hold, its certificate.
      const found = scanMemory(proxy().pid, [{ name: 'PEM header', bytes: Buffer.from('-----BEGIN CERTIFICATE-----') }]);
      assert.ok(found.length > 0, 'the scanner reads the proxy memory');
      return;
    }
    for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
      const s = await session(proxy().port, version);
      const found = scanMemory(proxy().pid, s.needles);
      for (const key of ['server write key', 'client write key']) {
        assert.ok(
          found.some((f) => f.name === key),
          `${version}: a relaying user-mode session's ${key} is in the proxy: ${describeFound(found)}`,
        );
      }
      await close(s.socket);
    }
  });

  test(`a TLS 1.2 session ID is never resumed: no server-side session cache keeps master secrets (${mode} mode)`, async () => {
    // Without tickets a client can only resume by session ID, which needs the server to have kept the session.
    const noTicket = { rejectUnauthorized: false, maxVersion: 'TLSv1.2', secureOptions: crypto.constants.SSL_OP_NO_TICKET } as const;
    const first = await connected(tls.connect({ port: proxy().port, host: '127.0.0.1', ...noTicket }));
    assert.equal(await echo(first, 'first'), 'first');
    const saved = first.getSession();
    assert.ok(saved, 'the client kept its session');
    await close(first);
    const second = await connected(tls.connect({ port: proxy().port, host: '127.0.0.1', ...noTicket, session: saved }));
    assert.equal(second.isSessionReused(), false, 'the proxy resumed a session by its ID');
    await close(second);
  });

  for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
    const what = version === 'TLSv1.3' ? 'traffic secrets' : 'master secret';
    test(`after a ${version} handshake fails at the client's Finished, the secrets it derived are gone from the proxy's memory within ${BOUND_MS / 1000} s (${mode} mode)`, async () => {
      const needles = await failedHandshake(proxy().port, version);
      const found = await scanUntilGone(proxy().pid, needles, BOUND_MS);
      assert.deepEqual(found, [], `still in the proxy's memory:\n  ${describeFound(found)}`);
    });
    if (mode === 'user') {
      test(`after a ${version} session closes, its ${what} and record keys are gone from the proxy's memory within ${BOUND_MS / 1000} s (user mode)`, async () => {
        const s = await session(proxy().port, version);
        await close(s.socket);
        const found = await scanUntilGone(proxy().pid, s.needles, BOUND_MS);
        assert.deepEqual(found, [], `still in the proxy's memory:\n  ${describeFound(found)}`);
      });
    } else {
      test(`while a ${version} session relays in the kernel, the proxy holds none of its ${what} or record keys (kernel mode)`, async () => {
        const s = await session(proxy().port, version);
        const found = await scanUntilGone(proxy().pid, s.needles, BOUND_MS);
        assert.deepEqual(found, [], `still in the proxy's memory:\n  ${describeFound(found)}`);
        assert.equal(await echo(s.socket, 'still relaying'), 'still relaying');
        await close(s.socket);
      });
    }
  }
}
