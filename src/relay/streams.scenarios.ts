// Bulk and concurrent verified streams, and data that rides with the client's Finished; run per lane (src/testkit/lanes.ts).
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import tls from 'node:tls';
import { echoBackend, streamBackend, streamChunk, type Backend } from '../testkit/backends.js';
import { eventually, startProxyProcess, type RunningProxy } from '../testkit/proxy-process.js';
import { streamThrough } from '../testkit/stream-client.js';
import { modeArgs, type Mode } from '../scenarios/real-clients.scenarios.js';
import { assertLaneKernel } from '../testkit/lane.js';

export function streamScenarios(mode: Mode): void {
  let backend: Awaited<ReturnType<typeof streamBackend>>;
  let proxy: RunningProxy;

  before(async () => {
    assertLaneKernel(mode);
    backend = await streamBackend();
    // 200 handshakes at once on one slow guest CPU can take longer than the default 10 s handshake
    // timeout, which would end a client with a bare EOF: these tests are about bytes, not timeouts.
    proxy = await startProxyProcess({ backendPort: backend.port, args: modeArgs(mode), config: '[timeouts]\nhandshake = "120s"\n' });
  });

  after(async () => {
    await proxy?.stop();
    await backend?.close();
  });

  test(`64 MiB each way through one ${mode}-mode connection arrive sha256-exact in both directions`, async () => {
    const n = 64 << 20;
    const r = await streamThrough(proxy.port, 'bulk64', n);
    assert.equal(r.mismatchAt, -1, `down stream differs at byte ${r.mismatchAt}`);
    assert.equal(r.received, n);
    await eventually(() => backend.results.has('bulk64'), 30_000, 'the backend to finish verifying');
    assert.deepEqual(backend.results.get('bulk64'), { received: n, ok: true });
  });

  test('200 concurrent connections each stream 256 KiB both ways with every byte verified', async () => {
    const n = 256 << 10;
    const seeds = Array.from({ length: 200 }, (_, i) => `conc${i}`);
    const results = await Promise.all(seeds.map((s) => streamThrough(proxy.port, s, n)));
    const warnings = () =>
      proxy
        .logs()
        .filter((l) => /"level":(40|50)/.test(l))
        .join('\n');
    for (const r of results) assert.ok(r.ok, `${r.seed}: received ${r.received}, mismatch at ${r.mismatchAt}; proxy warnings:\n${warnings()}`);
    await eventually(() => seeds.every((s) => backend.results.has(s)), 60_000, 'the backend to verify all 200 uploads');
    for (const s of seeds) assert.deepEqual(backend.results.get(s), { received: n, ok: true }, s);
    assert.equal(
      results.reduce((a, r) => a + r.resets, 0),
      0,
    );
    const s = await proxy.status();
    assert.equal(s.counters.handshakes_ok! >= 200, true);
  });

  /**
   * A TCP shim that forwards the ClientHello at once but holds the client's next flight for a moment
   * and forwards it as ONE write: the client's Finished and its first application data then reach the
   * proxy in the same segment.
   */
  async function coalescingShim(target: number): Promise<{ port: number; close(): void; maxProtectedRecords: () => number }> {
    let maxProtected = 0;
    const server = net.createServer((c) => {
      const up = net.connect(target, '127.0.0.1');
      let chunks = 0;
      let held: Buffer[] = [];
      let timer: NodeJS.Timeout | undefined;
      c.on('data', (d: Buffer) => {
        if (chunks++ === 0) return void up.write(d);
        held.push(d);
        timer ??= setTimeout(() => {
          const flight = Buffer.concat(held);
          let protectedRecords = 0;
          for (let o = 0; o + 5 <= flight.length; o += 5 + flight.readUInt16BE(o + 3)) if (flight[o] === 23) protectedRecords++;
          maxProtected = Math.max(maxProtected, protectedRecords);
          up.write(flight);
          held = [];
          timer = undefined;
          chunks = 1;
        }, 300);
      });
      up.pipe(c);
      c.on('end', () => up.end());
      c.on('error', () => up.destroy());
      up.on('error', () => c.destroy());
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return { port: (server.address() as net.AddressInfo).port, close: () => server.close(), maxProtectedRecords: () => maxProtected };
  }

  test('application data sent in the same segment as the client Finished reaches the backend intact', async () => {
    const echo: Backend = await echoBackend();
    const p = await startProxyProcess({ backendPort: echo.port, args: modeArgs(mode) });
    const shim = await coalescingShim(p.port);
    try {
      const payload = streamChunk('with-finished', 0, 40_000);
      const got = await new Promise<Buffer>((resolve, reject) => {
        const s = tls.connect({ port: shim.port, host: '127.0.0.1', rejectUnauthorized: false, minVersion: 'TLSv1.3' });
        // Written before the handshake completes: Node sends it right behind its Finished.
        s.write(payload);
        const parts: Buffer[] = [];
        let n = 0;
        s.on('data', (d: Buffer) => {
          parts.push(d);
          n += d.length;
          if (n >= payload.length) {
            resolve(Buffer.concat(parts));
            s.destroy();
          }
        });
        s.on('error', reject);
      });
      assert.ok(got.equals(payload), 'echoed bytes differ');
      // Finished plus at least one application record travelled in one write.
      assert.ok(shim.maxProtectedRecords() >= 2, `only ${shim.maxProtectedRecords()} protected records were coalesced`);
      const est = p.logs().find((l) => l.includes('"msg":"established"'));
      assert.match(est ?? '', new RegExp(`"mode":"${mode}"`));
    } finally {
      shim.close();
      await p.stop();
      await echo.close();
    }
  });
}
