// Checks the /metrics HTTP endpoint over a real socket: valid scrape, other paths, failing snapshots, busy address.
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '../core/log.js';
import { parsePromText } from '../testkit/prom-text.js';
import { createMetrics, type MetricsSnapshot } from './metrics.js';
import { startMetricsServer, type MetricsServer } from './server.js';

interface Reply {
  status: number;
  type: string | undefined;
  body: string;
  headers: http.IncomingHttpHeaders;
}

function request(address: string, path: string, method = 'GET'): Promise<Reply> {
  const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, path, method, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'], body, headers: res.headers }));
    });
    req.setTimeout(5000, () => req.destroy(new Error(`no answer to ${method} ${path} within 5 s`)));
    req.on('error', reject);
    req.end();
  });
}

let dir: string;
let failNext = false;
let accepted = 0;
const logged: Array<Record<string, unknown>> = [];
let server: MetricsServer;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ironsocket-metrics-http-'));
  const snapshot = (): MetricsSnapshot => {
    if (failNext) {
      failNext = false;
      throw new Error('relay stats unavailable');
    }
    return { counters: { connections_accepted: ++accepted }, live: { kernel: 1, user: 0 }, handshakesInProgress: 0, bytes: { in: 5, out: 6 }, listeners: 1 };
  };
  const logStream = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).trim().split('\n')) logged.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  server = await startMetricsServer(
    { host: '127.0.0.1', port: 0 },
    createMetrics(snapshot, { tlsStatPath: join(dir, 'absent') }),
    createLogger('info', logStream),
  );
});
after(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

describe('startMetricsServer', () => {
  it('answers GET /metrics with 200, the Prometheus content type and text that parses strictly', async () => {
    assert.match(server.address, /^127\.0\.0\.1:\d+$/);
    const r = await request(server.address, '/metrics');
    assert.equal(r.status, 200);
    assert.equal(r.type, 'text/plain; version=0.0.4; charset=utf-8');
    const families = parsePromText(r.body);
    assert.equal(families.get('ironsocket_connections_accepted_total')?.samples[0].value, accepted);
    assert.equal(families.get('ironsocket_connections')?.type, 'gauge');
    assert.ok(families.has('process_resident_memory_bytes'));
    assert.equal((await request(server.address, '/metrics?x=1')).status, 200, 'a query string is ignored');
  });

  it('answers HEAD /metrics like GET but without a body', async () => {
    const r = await request(server.address, '/metrics', 'HEAD');
    assert.equal(r.status, 200);
    assert.equal(r.type, 'text/plain; version=0.0.4; charset=utf-8');
    assert.ok(Number(r.headers['content-length']) > 0);
    assert.equal(r.body, '');
  });

  it('answers 404 for other paths and 405 for other methods on /metrics', async () => {
    for (const path of ['/', '/metric', '/metrics/', '/status']) {
      const r = await request(server.address, path);
      assert.equal(r.status, 404, path);
      assert.match(r.body, /not found: metrics are served at \/metrics/);
    }
    const post = await request(server.address, '/metrics', 'POST');
    assert.equal(post.status, 405);
    assert.equal(post.headers.allow, 'GET, HEAD');
  });

  it('answers 500 and logs when the snapshot throws, then keeps serving', async () => {
    failNext = true;
    const r = await request(server.address, '/metrics');
    assert.equal(r.status, 500);
    assert.match(r.body, /metrics are unavailable/);
    const line = logged.find((l) => typeof l.msg === 'string' && l.msg.includes('rendering /metrics failed'));
    assert.ok(line, 'the failure is logged');
    assert.equal(line.level, 50, 'at error level');
    assert.equal(line.err, 'relay stats unavailable');
    const again = await request(server.address, '/metrics');
    assert.equal(again.status, 200);
    assert.ok(parsePromText(again.body).has('ironsocket_connections_accepted_total'));
  });

  it('rejects with a message naming the address when it is already in use', async () => {
    const port = Number(server.address.split(':')[1]);
    const m = createMetrics(() => ({ counters: {}, live: { kernel: 0, user: 0 }, handshakesInProgress: 0, bytes: { in: 0, out: 0 }, listeners: 0 }));
    await assert.rejects(startMetricsServer({ host: '127.0.0.1', port }, m), {
      message: `metrics server cannot listen on 127.0.0.1:${port}: the address is already in use`,
    });
  });
});
