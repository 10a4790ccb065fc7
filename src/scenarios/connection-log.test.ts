// Proves a connection's log lines name it one way from start to end: `established` and `closed` both carry conn, client and listener.
import assert from 'node:assert/strict';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { echoBackend, type Backend } from '../testkit/backends.js';
import { startProxyProcess, type RunningProxy } from '../testkit/proxy-process.js';

interface Line {
  msg: string;
  conn?: string;
  client?: string;
  listener?: string;
  bytesIn?: number;
}

/** One TLS connection that echoes `text` and closes; resolves with the client's own address as the proxy sees it. */
function echoOnce(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let local = '';
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      local = `${s.localAddress}:${s.localPort}`;
      s.write(text);
    });
    let got = '';
    s.on('data', (d: Buffer) => {
      got += d.toString();
      if (got.length >= text.length) s.end();
    });
    s.once('close', () => resolve(local));
    s.once('error', reject);
  });
}

describe('connection log lines', () => {
  let backend: Backend;
  let proxy: RunningProxy;

  before(async () => {
    backend = await echoBackend();
    const listener = (name: string) => `[[listener]]\nname = "${name}"\nlisten = "127.0.0.1:0"\nbackend = "127.0.0.1:${backend.port}"\n`;
    proxy = await startProxyProcess({ backendPort: backend.port, noListenFlags: true, args: ['--ktls', 'off'], config: listener('web') + listener('db') });
  });
  after(async () => {
    await proxy.stop();
    await backend.close();
  });

  it('the closed line carries the client address and the listener, under the names the established line uses', async () => {
    const client = await echoOnce(proxy.ports[1]!, 'hello through db');
    const established = JSON.parse(await proxy.waitForLog(/"msg":"established"/, 10_000)) as Line;
    const closed = JSON.parse(await proxy.waitForLog(new RegExp(`"conn":"${established.conn}".*"msg":"closed: `), 10_000)) as Line;
    assert.equal(established.client, client);
    assert.equal(established.listener, 'db');
    assert.deepEqual(
      { conn: closed.conn, client: closed.client, listener: closed.listener, bytesIn: closed.bytesIn },
      { conn: established.conn, client, listener: 'db', bytesIn: 'hello through db'.length },
      JSON.stringify(closed),
    );
  });
});
