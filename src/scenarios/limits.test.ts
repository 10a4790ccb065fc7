// Timeouts and the connection limit: a silent client is dropped, an idle relay is closed, excess clients wait in the backlog.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import tls from 'node:tls';
import { echoBackend, type Backend } from '../testkit/backends.js';
import { eventually, startProxyProcess, tempDir, type RunningProxy } from '../testkit/proxy-process.js';

let echo: Backend;
let proxy: RunningProxy;
const dir = tempDir('limits');

before(async () => {
  echo = await echoBackend();
  const config = path.join(dir, 'ironsocket.toml');
  // Every client here comes from 127.0.0.1: no per-source limit (per-source-limits.test.ts has those).
  fs.writeFileSync(
    config,
    '[timeouts]\nhandshake = "400ms"\nidle = "700ms"\n\n[limits]\nmax_connections = 2\nmax_connections_per_source = 0\nmax_handshakes_per_source = 0\n',
  );
  proxy = await startProxyProcess({ backendPort: echo.port, args: ['--config', config] });
});

after(async () => {
  await proxy?.stop();
  await echo?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function tlsConnect(): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ port: proxy.port, host: '127.0.0.1', rejectUnauthorized: false });
    s.once('secureConnect', () => resolve(s));
    s.once('error', reject);
  });
}

test('a client that never sends a ClientHello is disconnected after the handshake timeout', async () => {
  const start = Date.now();
  const closedAfter = await new Promise<number>((resolve) => {
    const s = net.connect(proxy.port, '127.0.0.1');
    s.on('error', () => {});
    s.on('close', () => resolve(Date.now() - start));
    s.resume();
  });
  assert.ok(closedAfter >= 350, `closed after ${closedAfter} ms, before the 400 ms timeout`);
  assert.ok(closedAfter < 10_000, `closed only after ${closedAfter} ms`);
  await proxy.waitForLog(/handshake not finished after 400 ms/);
});

test('an established connection with no traffic is closed after the idle timeout', async () => {
  const s = await tlsConnect();
  s.write('ping');
  await new Promise((r) => s.once('data', r));
  const idleStart = Date.now();
  await new Promise<void>((resolve) => {
    s.on('error', () => {});
    s.on('close', () => resolve());
  });
  const idle = Date.now() - idleStart;
  assert.ok(idle >= 650, `closed after ${idle} ms of idleness`);
  await proxy.waitForLog(/idle for more than 700 ms/);
});

test('beyond max_connections a new client waits in the backlog and is served once a slot frees', async () => {
  const a = await tlsConnect();
  const b = await tlsConnect();
  a.on('error', () => {});
  b.on('error', () => {});
  let thirdDone = false;
  const third = tlsConnect().then((s) => {
    thirdDone = true;
    return s;
  });
  // Keep a and b busy so the idle timeout does not free a slot by itself.
  const keepAlive = setInterval(() => {
    a.write('x');
    b.write('x');
  }, 100);
  try {
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(thirdDone, false, 'the third client was served while two connections were live');
    a.destroy();
    const c = await third;
    c.write('hello');
    const echoed = await new Promise<Buffer>((r) => c.once('data', r));
    assert.equal(echoed.toString(), 'hello');
    c.destroy();
  } finally {
    clearInterval(keepAlive);
    b.destroy();
  }
  await eventually(async () => (await proxy.status()).connections.length === 0, 10_000, 'connections to drain');
});
