// One source flooding the proxy (idle TLS connections, handshakes that never finish) is held to its per-source limits while others are served.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { NOTES_UNLIMITED } from '../relay/budget.js';
import { echoBackend, type Backend } from '../testkit/backends.js';
import { parsePromText } from '../testkit/prom-text.js';
import { CLI, eventually, startProxyProcess, type RunningProxy } from '../testkit/proxy-process.js';

const run = promisify(execFile);
// max_connections is small enough that, without per-source limits, either flood below fills the proxy.
const MAX = 12;
const PER_SOURCE = 6;
const HANDSHAKES = 3;
const GOOD = '127.0.0.2';

let echo: Backend;
let proxy: RunningProxy;
let metricsPort: number;

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

before(async () => {
  echo = await echoBackend();
  metricsPort = await freePort();
  proxy = await startProxyProcess({
    backendPort: echo.port,
    args: ['--ktls', 'off'],
    config:
      `[timeouts]\nhandshake = "30s"\n\n` +
      `[limits]\nmax_connections = ${MAX}\nmax_connections_per_source = ${PER_SOURCE}\nmax_handshakes_per_source = ${HANDSHAKES}\n\n` +
      `[metrics]\nlisten = "127.0.0.1:${metricsPort}"\n`,
  });
});

after(async () => {
  await proxy?.stop();
  await echo?.close();
});

/** A TLS client from `from`: its socket once the handshake is done, or why it did not get there within `ms`. */
function tlsFrom(from: string, ms = 3000): Promise<tls.TLSSocket | 'reset' | 'timeout'> {
  return new Promise((resolve) => {
    // node:tls passes localAddress on to net.connect; its option type just does not list it.
    const s = tls.connect({ host: '127.0.0.1', port: proxy.port, rejectUnauthorized: false, ...{ localAddress: from } });
    const t = setTimeout(() => {
      s.destroy();
      resolve('timeout');
    }, ms);
    s.once('secureConnect', () => {
      clearTimeout(t);
      resolve(s);
    });
    s.once('error', () => {
      clearTimeout(t);
      resolve('reset');
    });
  });
}

/** A client from GOOD echoes a message through the proxy; how long it took (connect included). */
async function goodClientServed(): Promise<number> {
  const start = Date.now();
  const s = await tlsFrom(GOOD, 5000);
  assert.ok(typeof s !== 'string', `the good client's handshake: ${String(s)}`);
  s.write('hello');
  const echoed = await new Promise<Buffer>((r) => s.once('data', r));
  assert.equal(echoed.toString(), 'hello');
  s.destroy();
  return Date.now() - start;
}

async function counter(name: string): Promise<number> {
  return (await proxy.status()).counters[name] ?? 0;
}

const rejectionLines = (source: string) => proxy.logs().filter((l) => l.includes(`rejected a connection from ${source}`));

async function sourcesDrainToZero(): Promise<void> {
  await eventually(async () => (await proxy.status()).limits?.sources === 0, 15_000, 'every source to hold no connection');
  const st = await proxy.status();
  assert.deepEqual(st.limits?.busiest, []);
  assert.equal(st.counters.handshakes_in_progress, 0);
}

test('the start banner shows the connection limits and the idle policy', async () => {
  await eventually(() => proxy.stderr().includes('to change:'), 10_000, 'the banner');
  assert.match(proxy.stderr(), /\n {2}limits {9}12 connections; per source \(IPv4 address, IPv6 \/64\): 6 connections, 3 in handshake\n/);
  assert.match(proxy.stderr(), /\n {2}idle timeout {3}none: idle connections stay open \(websockets, databases\); set \[timeouts\] idle to close them\n/);
});

test('one source opening idle TLS connections past max_connections_per_source is reset, while another source is served promptly', async () => {
  const bad = '127.0.0.3';
  const held: tls.TLSSocket[] = [];
  let reset = 0;
  try {
    for (let i = 0; i < MAX + 2; i++) {
      const s = await tlsFrom(bad);
      if (typeof s === 'string') {
        assert.equal(s, 'reset', `attempt ${i + 1} from ${bad} neither served nor reset`);
        reset++;
      } else {
        s.on('error', () => {});
        held.push(s);
        // An echo: the proxy has it relayed (no longer in handshake) before the next attempt.
        s.write('x');
        await new Promise((r) => s.once('data', r));
      }
    }
    assert.equal(held.length, PER_SOURCE, 'connections the flooding source got');
    assert.equal(reset, MAX + 2 - PER_SOURCE);
    const took = await goodClientServed();
    assert.ok(took < 2000, `the good client took ${took} ms`);
    assert.equal(await counter('rejected_per_source_connections'), reset);
    const st = await proxy.status();
    assert.deepEqual(st.limits?.busiest, [{ source: bad, connections: PER_SOURCE, handshakes: 0 }]);
    const lines = rejectionLines(bad);
    assert.ok(lines.length >= 1 && lines.length <= NOTES_UNLIMITED + 1, `${lines.length} rejection log lines`);
    assert.match(lines[0]!, /at max_connections_per_source \(6\); it has 6 open/);
  } finally {
    for (const s of held) s.destroy();
  }
  await sourcesDrainToZero();
});

test('one source holding handshakes open past max_handshakes_per_source is reset before any TLS work, while another source is served promptly', async () => {
  const bad = '127.0.0.4';
  const before = await counter('rejected_per_source_handshakes');
  const floods = 40;
  const sockets: net.Socket[] = [];
  let reset = 0;
  const allDone = new Promise<void>((resolve) => {
    for (let i = 0; i < floods; i++) {
      // Connects and sends nothing: a handshake that never finishes.
      const s = net.connect({ host: '127.0.0.1', port: proxy.port, localAddress: bad });
      s.on('error', () => {});
      s.resume(); // reading, so that a reset is noticed
      s.on('close', () => {
        if (++reset === floods - HANDSHAKES) resolve();
      });
      sockets.push(s);
    }
  });
  try {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`only ${reset} of ${floods - HANDSHAKES} connections over the limit were reset`)), 10_000);
    });
    await Promise.race([allDone, late]).finally(() => clearTimeout(timer));
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(sockets.filter((s) => !s.destroyed).length, HANDSHAKES, 'connections left open in handshake');
    const took = await goodClientServed();
    assert.ok(took < 2000, `the good client took ${took} ms`);
    await eventually(async () => (await counter('rejected_per_source_handshakes')) === before + floods - HANDSHAKES, 5000, 'the rejections counted');
    const st = await proxy.status();
    assert.deepEqual(st.limits?.busiest, [{ source: bad, connections: HANDSHAKES, handshakes: HANDSHAKES }]);
    const lines = rejectionLines(bad);
    assert.ok(lines.length >= 1 && lines.length <= NOTES_UNLIMITED + 1, `${lines.length} rejection log lines for ${floods - HANDSHAKES} rejections`);
    assert.match(lines[0]!, /at max_handshakes_per_source \(3\); it has 3 open, 3 in handshake/);
  } finally {
    for (const s of sockets) s.destroy();
  }
  await sourcesDrainToZero();
});

test('a failed handshake and a relayed connection that ends both leave their source, and /metrics shows the rejections by limit', async () => {
  const from = '127.0.0.5';
  const garbage = net.connect({ host: '127.0.0.1', port: proxy.port, localAddress: from });
  garbage.on('error', () => {});
  garbage.resume();
  garbage.end('GET / HTTP/1.0\r\n\r\n');
  await new Promise((r) => garbage.once('close', r));
  const s = await tlsFrom(from);
  assert.ok(typeof s !== 'string');
  s.write('x');
  await new Promise((r) => s.once('data', r));
  s.end();
  await sourcesDrainToZero();

  const body = await new Promise<string>((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port: metricsPort, path: '/metrics' }, (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (d: string) => (text += d));
        res.on('end', () => resolve(text));
      })
      .on('error', reject);
  });
  const m = parsePromText(body);
  const sample = (family: string, labels: Record<string, string> = {}) =>
    m.get(family)?.samples.find((x) => Object.entries(labels).every(([k, v]) => x.labels[k] === v))?.value;
  const st = await proxy.status();
  assert.equal(sample('ironsocket_rejected_per_source_total', { limit: 'connections' }), st.counters.rejected_per_source_connections);
  assert.equal(sample('ironsocket_rejected_per_source_total', { limit: 'handshakes' }), st.counters.rejected_per_source_handshakes);
  assert.ok((st.counters.rejected_per_source_handshakes ?? 0) > 0);
  assert.equal(sample('ironsocket_sources'), 0);
});

test('connections carried across an in-place upgrade still count against their source in the new image', async () => {
  const from = '127.0.0.6';
  const held: tls.TLSSocket[] = [];
  for (let i = 0; i < PER_SOURCE; i++) {
    const s = await tlsFrom(from);
    assert.ok(typeof s !== 'string', `connection ${i + 1}: ${String(s)}`);
    s.on('error', () => {});
    held.push(s);
    s.write('x'); // relayed before the next one (not still counted in handshake)
    await new Promise((r) => s.once('data', r));
  }
  try {
    const { stdout } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket, '--timeout', '120']);
    assert.equal((JSON.parse(stdout) as { ok: boolean }).ok, true, stdout);
    const st = await proxy.status();
    assert.equal(st.generation, 2);
    assert.deepEqual(st.limits?.busiest, [{ source: from, connections: PER_SOURCE, handshakes: 0 }]);
    assert.equal(await tlsFrom(from), 'reset', 'one more from the same source after the upgrade');
    const took = await goodClientServed();
    assert.ok(took < 2000, `the good client took ${took} ms`);
    // The carried connections still relay.
    held[0]!.write('after');
    assert.equal((await new Promise<Buffer>((r) => held[0]!.once('data', r))).toString(), 'after');
  } finally {
    for (const s of held) s.destroy();
  }
  await sourcesDrainToZero();
});

test('a reload applies new per-source limits to the next connections', async () => {
  const file = path.join(proxy.dir, 'ironsocket.toml');
  fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace(`max_connections_per_source = ${PER_SOURCE}`, 'max_connections_per_source = 2'));
  const { stdout } = await run(process.execPath, [CLI, 'reload', '--admin-socket', proxy.adminSocket]);
  assert.equal((JSON.parse(stdout) as { ok: boolean }).ok, true, stdout);
  assert.equal((await proxy.status()).limits?.maxConnectionsPerSource, 2);
  const from = '127.0.0.7';
  const held: tls.TLSSocket[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      const s = await tlsFrom(from);
      assert.ok(typeof s !== 'string', `connection ${i + 1}: ${String(s)}`);
      s.on('error', () => {});
      held.push(s);
      s.write('x');
      await new Promise((r) => s.once('data', r));
    }
    assert.equal(await tlsFrom(from), 'reset', 'a third from the same source');
  } finally {
    for (const s of held) s.destroy();
  }
  await sourcesDrainToZero();
});
