// Proves /metrics on a running proxy: strict Prometheus text whose counters match a scripted workload, per listener too, before and after an upgrade.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { echoBackend, type Backend } from '../testkit/backends.js';
import { parsePromText, type PromFamily } from '../testkit/prom-text.js';
import { CLI, eventually, startProxyProcess, type RunningProxy } from '../testkit/proxy-process.js';

const run = promisify(execFile);

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

function scrape(port: number): Promise<Map<string, PromFamily>> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => (body += d));
        res.on('end', () => {
          if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}: ${body}`));
          assert.match(String(res.headers['content-type']), /^text\/plain; version=0\.0\.4/);
          resolve(parsePromText(body));
        });
      })
      .on('error', reject);
  });
}

/** The value of one series; `labels` must match exactly the labels given. */
function value(m: Map<string, PromFamily>, family: string, labels: Record<string, string> = {}): number | undefined {
  const f = m.get(family);
  return f?.samples.find((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}

function tlsEcho(port: number, bytes: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => s.write(Buffer.alloc(bytes, 7)));
    let got = 0;
    s.on('data', (d: Buffer) => {
      got += d.length;
      if (got === bytes) resolve(s);
    });
    s.once('error', reject);
  });
}

/** A client that sends junk instead of a ClientHello: a malformed handshake. */
function junk(port: number): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(Buffer.from('GET / HTTP/1.1\r\n\r\n')));
    s.on('data', () => {});
    s.on('close', () => resolve());
    s.on('error', () => resolve());
  });
}

describe('the /metrics endpoint', () => {
  let backend: Backend;
  let proxy: RunningProxy;
  let metricsPort: number;

  before(async () => {
    backend = await echoBackend();
    metricsPort = await freePort();
    proxy = await startProxyProcess({ backendPort: backend.port, args: ['--ktls', 'off'], config: `[metrics]\nlisten = "127.0.0.1:${metricsPort}"\n` });
  });
  after(async () => {
    await proxy.stop();
    await backend.close();
  });

  it('counts a scripted workload exactly, and keeps counting across an upgrade', async () => {
    const kept = await tlsEcho(proxy.port, 1000);
    const gone = await tlsEcho(proxy.port, 3000);
    await new Promise<void>((r) => gone.end(r));
    await junk(proxy.port);
    await junk(proxy.port);
    await eventually(async () => (await proxy.status()).counters.connections_closed === 1, 10_000, 'the closed connection to be counted');

    const m = await scrape(metricsPort);
    assert.equal(value(m, 'ironsocket_connections_accepted_total'), 4);
    assert.equal(value(m, 'ironsocket_handshakes_total', { result: 'ok' }), 2);
    assert.equal(value(m, 'ironsocket_handshakes_failed_total', { reason: 'malformed' }), 2);
    assert.equal(value(m, 'ironsocket_connections', { mode: 'user' }), 1);
    assert.equal(value(m, 'ironsocket_connections', { mode: 'kernel' }), 0);
    assert.equal(value(m, 'ironsocket_connections_total', { mode: 'user' }), 2);
    assert.equal(value(m, 'ironsocket_connections_closed_total'), 1);
    assert.equal(value(m, 'ironsocket_bytes_total', { direction: 'in' }), 4000);
    assert.equal(value(m, 'ironsocket_bytes_total', { direction: 'out' }), 4000);
    assert.equal(value(m, 'ironsocket_generation'), 1);
    assert.equal(value(m, 'ironsocket_upgrades_total'), 0);
    assert.ok((value(m, 'process_resident_memory_bytes') ?? 0) > 0, 'process metrics');

    const { stdout } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket]);
    assert.equal((JSON.parse(stdout) as { ok: boolean }).ok, true);
    kept.write(Buffer.alloc(500, 1));
    await new Promise((r) => setTimeout(r, 300));
    const after = await scrape(metricsPort);
    assert.equal(value(after, 'ironsocket_generation'), 2);
    assert.equal(value(after, 'ironsocket_upgrades_total'), 1);
    assert.equal(value(after, 'ironsocket_upgrade_last_moved_connections'), 1);
    assert.equal(value(after, 'ironsocket_connections_accepted_total'), 4, 'carried across the exec');
    assert.equal(value(after, 'ironsocket_handshakes_failed_total', { reason: 'malformed' }), 2);
    assert.equal(value(after, 'ironsocket_connections', { mode: 'user' }), 1);
    assert.equal(value(after, 'ironsocket_bytes_total', { direction: 'in' }), 4500, 'the moved connection kept its byte counts');
    kept.destroy();
  });

  it('answers 404 for other paths', async () => {
    const code = await new Promise<number>((resolve, reject) =>
      http.get({ host: '127.0.0.1', port: metricsPort, path: '/' }, (res) => (res.resume(), resolve(res.statusCode ?? 0))).on('error', reject),
    );
    assert.equal(code, 404);
  });
});

describe('the /metrics endpoint with several listeners', () => {
  it('counts each connection under the listener that accepted it, also after an upgrade', async () => {
    const backend = await echoBackend();
    const metricsPort = await freePort();
    const listener = (name: string) => `[[listener]]\nname = "${name}"\nlisten = "127.0.0.1:0"\nbackend = "127.0.0.1:${backend.port}"\n`;
    const proxy = await startProxyProcess({
      backendPort: backend.port,
      noListenFlags: true,
      args: ['--ktls', 'off'],
      config: `[metrics]\nlisten = "127.0.0.1:${metricsPort}"\n${listener('web')}${listener('db')}`,
    });
    try {
      const db = proxy.ports[1]!;
      const kept = await tlsEcho(db, 1000);
      const gone = await tlsEcho(db, 3000);
      await new Promise<void>((r) => gone.end(r));
      await eventually(async () => (await proxy.status()).counters.connections_closed === 1, 10_000, 'the closed connection to be counted');

      const m = await scrape(metricsPort);
      const each = (family: string, labels: Record<string, string> = {}) => ['web', 'db'].map((listener) => value(m, family, { listener, ...labels }));
      assert.deepEqual(each('ironsocket_connections_accepted_total'), [0, 2]);
      assert.deepEqual(each('ironsocket_connections', { mode: 'user' }), [0, 1]);
      assert.deepEqual(each('ironsocket_connections_total', { mode: 'user' }), [0, 2]);
      assert.deepEqual(each('ironsocket_connections_closed_total'), [0, 1]);
      assert.deepEqual(each('ironsocket_bytes_total', { direction: 'in' }), [0, 4000]);
      const byCause = m.get('ironsocket_connections_closed_by_cause_total')!.samples;
      assert.equal(
        byCause.filter((x) => x.labels.listener === 'db').reduce((n, x) => n + x.value, 0),
        1,
        'closed under db, whatever the cause',
      );
      for (const family of ['ironsocket_connections_accepted_total', 'ironsocket_connections', 'ironsocket_bytes_total'])
        assert.ok(
          m.get(family)!.samples.every((x) => x.labels.listener !== undefined),
          `${family}: every connection was counted under its listener`,
        );

      const { stdout } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket]);
      assert.equal((JSON.parse(stdout) as { ok: boolean }).ok, true);
      const after = await scrape(metricsPort);
      assert.equal(value(after, 'ironsocket_connections_accepted_total', { listener: 'db' }), 2, 'carried across the exec');
      assert.equal(value(after, 'ironsocket_connections', { listener: 'db', mode: 'user' }), 1, 'the moved connection is still counted under db');
      assert.equal(value(after, 'ironsocket_bytes_total', { listener: 'db', direction: 'in' }), 4000);
      kept.destroy();
    } finally {
      await proxy.stop();
      await backend.close();
    }
  });
});
