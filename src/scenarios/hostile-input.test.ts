// Hostile handshakes against the proxy process: each has a defined outcome (alert, close, timeout or service) and a counter.
// (Plaintext HTTP and oversized record headers are in close-behaviour.scenarios.ts; a silent client's timeout log in limits.test.ts.)
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, test } from 'node:test';
import tls from 'node:tls';
import { echoBackend, streamChunk, type Backend } from '../testkit/backends.js';
import { captureClientHello, oneByteTransport, tlsRecord } from '../testkit/hostile.js';
import { eventually, makeCert, startProxyProcess, tempDir, type RunningProxy } from '../testkit/proxy-process.js';

const HANDSHAKE_TIMEOUT_MS = 1000;
let echo: Backend;
let proxy: RunningProxy;
let hello: Buffer;

before(async () => {
  echo = await echoBackend();
  const cert = await makeCert(tempDir('hostile'), 'ec');
  proxy = await startProxyProcess({ backendPort: echo.port, cert, args: ['--ktls', 'off'], config: '[timeouts]\nhandshake = "1s"\n' });
  hello = await captureClientHello();
  await echoThrough(await tlsClient()); // warm-up: every lazily opened fd exists before baselines are taken
});

after(async () => {
  await proxy?.stop();
  await echo?.close();
});

async function counter(name: string): Promise<number> {
  return (await proxy.status()).counters[name] ?? 0;
}

/** Waits until `name` has grown by exactly `by` from `before` (and checks it did not overshoot). */
async function counted(name: string, before: number, by: number): Promise<void> {
  await eventually(async () => (await counter(name)) >= before + by, 10_000, `${name} to reach ${before + by}`);
  assert.equal(await counter(name), before + by, `${name} counted ${by} time(s)`);
}

/** `p`, or a failure naming `what` when it has not settled within `ms`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

function tlsClient(opts: tls.ConnectionOptions = {}): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ port: proxy.port, host: '127.0.0.1', servername: 'localhost', rejectUnauthorized: false, ...opts });
    s.once('secureConnect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Writes a message and waits for the same bytes back. */
async function echoThrough(s: tls.TLSSocket, msg = 'ping'): Promise<void> {
  let got = '';
  const done = new Promise<void>((resolve, reject) => {
    const onData = (d: Buffer) => {
      got += d.toString('latin1');
      if (got.length >= msg.length) {
        s.off('data', onData);
        if (got === msg) resolve();
        else reject(new Error(`echo ${JSON.stringify(got)} instead of ${JSON.stringify(msg)}`));
      }
    };
    s.on('data', onData);
    s.once('error', reject);
  });
  s.write(msg);
  await done;
}

/** Sends `bytes` on a raw TCP connection; resolves with what came back, how it ended and after how long. */
async function rawExchange(bytes: Buffer, then?: (s: net.Socket, got: () => Buffer) => Promise<void>): Promise<{ got: Buffer; end: string; ms: number }> {
  const s = net.connect({ port: proxy.port, host: '127.0.0.1' });
  await once(s, 'connect');
  const start = Date.now();
  const chunks: Buffer[] = [];
  s.on('data', (d: Buffer) => chunks.push(d));
  const ended = new Promise<string>((r) => {
    s.once('end', () => r('EOF'));
    s.once('error', (e: NodeJS.ErrnoException) => r(e.code ?? e.message));
  });
  s.write(bytes);
  if (then) await then(s, () => Buffer.concat(chunks));
  const end = await Promise.race([ended, new Promise<string>((r) => setTimeout(() => r('still open after 15 s'), 15_000))]);
  s.destroy();
  return { got: Buffer.concat(chunks), end, ms: Date.now() - start };
}

/** Content types of the plaintext record headers in `buf`. */
function recordTypes(buf: Buffer): number[] {
  const types: number[] = [];
  for (let o = 0; o + 5 <= buf.length; o += 5 + buf.readUInt16BE(o + 3)) types.push(buf[o]!);
  return types;
}

async function fdsBackTo(base: number): Promise<void> {
  await eventually(() => proxy.fdCount() <= base, 15_000, `the proxy's fd count back to ${base} (now ${proxy.fdCount()})`);
}

test('random bytes instead of a ClientHello get a plaintext alert or a close, counted as handshake_failed_malformed', async () => {
  const base = proxy.fdCount();
  const garbage = streamChunk('hostile random bytes', 0, 1024);
  assert.ok(garbage[0]! < 20 || garbage[0]! > 24, 'the seeded bytes do not start like a TLS record');
  const before = await counter('handshake_failed_malformed');
  const { got, end } = await rawExchange(garbage);
  assert.equal(end, 'EOF', 'the proxy closes with a FIN');
  assert.ok(got.length === 0 || (got.length === 7 && got[0] === 21 && got[5] === 2), `a fatal plaintext alert or nothing, got ${got.toString('hex')}`);
  await counted('handshake_failed_malformed', before, 1);
  await fdsBackTo(base);
});

test('a ClientHello split into 1-byte segments still completes a handshake and is served', async () => {
  const before = await counter('handshakes_ok');
  const sock = net.connect({ port: proxy.port, host: '127.0.0.1' });
  await once(sock, 'connect');
  const c = tls.connect({ socket: oneByteTransport(sock), servername: 'localhost', rejectUnauthorized: false });
  await once(c, 'secureConnect');
  await echoThrough(c, 'every byte of the hello arrived on its own');
  c.destroy();
  await counted('handshakes_ok', before, 1);
});

test('a handshake that never finishes (3 bytes, then nothing) is closed at the 1 s handshake timeout, counted as handshake_failed_timeout', async () => {
  const base = proxy.fdCount();
  const before = await counter('handshake_failed_timeout');
  const { end, ms } = await rawExchange(hello.subarray(0, 3));
  assert.equal(end, 'EOF', 'closed by the proxy');
  assert.ok(ms >= HANDSHAKE_TIMEOUT_MS - 100, `closed after ${ms} ms, before the handshake timeout`);
  assert.ok(ms < HANDSHAKE_TIMEOUT_MS + 3000, `closed only after ${ms} ms`);
  await counted('handshake_failed_timeout', before, 1);
  await fdsBackTo(base);
});

test('a TLS 1.2 renegotiation is refused with a warning no_renegotiation (RFC 5746 §4.5); OpenSSL as the client then gives up the connection, and another connection carries on', async () => {
  const other = await tlsClient();
  await echoThrough(other, 'before');
  const closedBefore = await counter('connections_closed');
  const clientAlertsBefore = await counter('closed_client_alert');
  const mark = proxy.logs().length;
  const c = await tlsClient({ maxVersion: 'TLSv1.2' });
  assert.equal(c.getProtocol(), 'TLSv1.2');
  await echoThrough(c, 'first echo');
  const errored = new Promise<Error>((resolve) => c.once('error', resolve));
  const closed = new Promise((resolve) => c.once('close', resolve));
  // node:tls calls back only on success (a 'secure' event); a refusal shows as the error and the close.
  let renegotiated = false;
  assert.ok(
    c.renegotiate({ rejectUnauthorized: false }, (e) => {
      if (!e) renegotiated = true;
    }),
    'the client sent a renegotiation ClientHello',
  );
  const err = await within(errored, 10_000, 'the refusal of the renegotiation');
  // Our warning makes OpenSSL's client fail the renegotiation and end the connection with its own fatal alert.
  assert.match(String((err as NodeJS.ErrnoException).code), /NO_RENEGOTIATION/, `the no_renegotiation warning, got ${err.message}`);
  await within(closed, 10_000, 'the close after the refusal');
  assert.equal(renegotiated, false, 'the renegotiation did not complete');
  await counted('connections_closed', closedBefore, 1);
  await counted('closed_client_alert', clientAlertsBefore, 1);
  await proxy.waitForLog(/answered no_renegotiation \(warning\)/);
  await proxy.waitForLog(/closed: client sent fatal alert 40/);
  assert.ok(
    proxy
      .logs()
      .slice(mark)
      .some((l) => /renegotiation/.test(l)),
  );
  await echoThrough(other, 'after the other was refused');
  other.destroy();
});

test('a heartbeat record during the handshake closes the connection, counted as handshake_failed_tls', async () => {
  const base = proxy.fdCount();
  const before = await counter('handshake_failed_tls');
  // Heartbleed-style: claims 16 KiB of payload and carries 3 bytes.
  const heartbeat = tlsRecord(24, Buffer.from([1, 0x40, 0x00, 0x61, 0x62, 0x63, ...Buffer.alloc(16)]));
  const { got, end } = await rawExchange(hello, async (s, gotSoFar) => {
    await eventually(() => recordTypes(gotSoFar()).includes(22), 10_000, 'the ServerHello');
    s.write(heartbeat);
  });
  assert.equal(recordTypes(got)[0], 22, 'the server answered the ClientHello first');
  assert.equal(end, 'EOF', 'then closed the connection');
  await counted('handshake_failed_tls', before, 1);
  await fdsBackTo(base);
});

test('200 simultaneous half-open handshakes do not stop a good client, and all are closed at the handshake timeout with fds back to baseline', async () => {
  const base = proxy.fdCount();
  const before = await counter('handshake_failed_timeout');
  const closedAt: number[] = [];
  const sockets = await Promise.all(
    Array.from({ length: 200 }, async () => {
      const s = net.connect({ port: proxy.port, host: '127.0.0.1' });
      s.on('error', () => {});
      s.on('close', () => closedAt.push(Date.now()));
      s.resume();
      await once(s, 'connect');
      return s;
    }),
  );
  const openedAt = Date.now();
  const good = await tlsClient();
  await echoThrough(good, 'served beside 200 silent clients');
  const servedAt = Date.now();
  good.destroy();
  assert.equal(closedAt.length, 0, `the good client was served ${servedAt - openedAt} ms after the 200 opened, before any timed out`);
  await eventually(() => closedAt.length === 200, 15_000, `all 200 closed (${closedAt.length} so far)`);
  assert.ok(Math.min(...closedAt) - openedAt >= HANDSHAKE_TIMEOUT_MS - 300, 'none closed well before the handshake timeout');
  for (const s of sockets) s.destroy();
  await counted('handshake_failed_timeout', before, 200);
  await fdsBackTo(base);
});
