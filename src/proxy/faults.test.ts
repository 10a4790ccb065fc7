// Faults around a relayed connection: a backend that resets or never reads, a client that vanishes without FIN, running out of descriptors on accept.
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import tls from 'node:tls';
import { echoBackend, scriptedBackend } from '../testkit/backends.js';
import { eventually, startProxyProcess, type RunningProxy } from '../testkit/proxy-process.js';

function tlsConnect(port: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false });
    s.once('secureConnect', () => resolve(s));
    s.once('error', reject);
  });
}

async function roundTrip(s: tls.TLSSocket, msg: string): Promise<void> {
  let got = '';
  const done = new Promise<void>((resolve, reject) => {
    const onData = (d: Buffer) => {
      got += d.toString();
      if (got.length >= msg.length) {
        s.off('data', onData);
        resolve();
      }
    };
    s.on('data', onData);
    s.once('error', reject);
  });
  s.write(msg);
  await done;
  assert.equal(got, msg);
}

function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

function logsAfter(proxy: RunningProxy, mark: number, re: RegExp): string[] {
  return proxy
    .logs()
    .slice(mark)
    .filter((l) => re.test(l));
}

describe('a backend that misbehaves mid-stream', () => {
  let proxy: RunningProxy;
  let backend: Awaited<ReturnType<typeof scriptedBackend>>;
  after(async () => {
    await proxy?.stop();
    await backend?.close();
  });

  test(
    'a backend that resets mid-stream closes its client promptly with the reason logged and counted, and another connection keeps working',
    { timeout: 30_000 },
    async (t) => {
      backend = await scriptedBackend();
      proxy = await startProxyProcess({ backendPort: backend.port });
      const other = await tlsConnect(proxy.port); // echoes
      await roundTrip(other, 'before');
      let reset = 0;
      backend.next((s) => {
        s.once('data', (d) => {
          s.write(d);
          setTimeout(() => {
            reset = Date.now();
            s.resetAndDestroy();
          }, 200);
        });
      });
      const mark = proxy.logs().length;
      const before = (await proxy.status()).counters;
      const closedBefore = before.connections_closed ?? 0;
      const victim = await tlsConnect(proxy.port);
      let err: NodeJS.ErrnoException | undefined;
      victim.on('error', (e) => (err = e));
      const closed = new Promise((r) => victim.once('close', r));
      await roundTrip(victim, 'hello');
      await closed;
      const tookMs = Date.now() - reset;
      assert.ok(reset > 0 && tookMs < 2000, `the client was closed ${tookMs} ms after the backend reset`);
      assert.equal(err?.code, 'ERR_SSL_TLSV1_ALERT_INTERNAL_ERROR', `the client gets a fatal alert: ${err?.message}`);
      await eventually(() => logsAfter(proxy, mark, /closed: /).length > 0, 5000, 'a closed log line');
      const line = logsAfter(proxy, mark, /closed: /)[0]!;
      t.diagnostic(line);
      assert.match(line, /"conn":"c\d+"/);
      assert.match(line, /reset|ECONNRESET/i, `the logged reason names the reset: ${line}`);
      const after = (await proxy.status()).counters;
      assert.equal(after.connections_closed, closedBefore + 1, 'counted in connections_closed');
      assert.equal((after.closed_backend_error ?? 0) - (before.closed_backend_error ?? 0), 1, 'counted as closed_backend_error');
      await roundTrip(other, 'still here');
      other.destroy();
    },
  );

  test(
    'a backend that accepts but never reads stops the proxy reading from the client, whose writes block, and the proxy RSS stays bounded while it pushes 64 MiB',
    { timeout: 60_000 },
    async (t) => {
      const sink: net.Socket[] = [];
      backend.next((s) => {
        s.pause(); // never reads
        sink.push(s);
      });
      const rssBefore = rssKiB(proxy.pid);
      let rssMax = rssBefore;
      const sampler = setInterval(() => (rssMax = Math.max(rssMax, rssKiB(proxy.pid))), 50);
      const c = await tlsConnect(proxy.port);
      c.on('error', () => {});
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      const total = 64 * 1024 * 1024;
      let pushed = 0;
      let blocked = false;
      try {
        while (pushed < total) {
          pushed += chunk.length;
          if (c.write(chunk)) continue;
          // Wait for room; no drain within 2 s means the writes are blocked end to end.
          const drained = await Promise.race([once(c, 'drain').then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 2000))]);
          if (!drained) {
            blocked = true;
            break;
          }
        }
        rssMax = Math.max(rssMax, rssKiB(proxy.pid));
      } finally {
        clearInterval(sampler);
      }
      assert.ok(blocked, `the client pushed all ${total} bytes without blocking`);
      // Kernel buffers on the way hold what was pushed; the proxy itself must not hold much.
      const growMiB = (rssMax - rssBefore) / 1024;
      t.diagnostic(`RSS grew ${growMiB.toFixed(1)} MiB; pushed ${(pushed / 2 ** 20).toFixed(1)} MiB before blocking`);
      assert.ok(growMiB < 24, `proxy RSS grew by ${growMiB.toFixed(1)} MiB (pushed ${(pushed / 2 ** 20).toFixed(1)} MiB before blocking)`);
      assert.ok(pushed < total, 'the client was stopped before 64 MiB');
      c.destroy();
      for (const s of sink) s.destroy();
    },
  );
});

describe('a client that vanishes without FIN', () => {
  let proxy: RunningProxy;
  after(() => proxy?.stop());

  test(
    'a client frozen after the handshake (no FIN, no RST, no bytes) is closed by the 2 s idle timeout, logged and counted',
    { timeout: 30_000 },
    async () => {
      const echo = await echoBackend();
      proxy = await startProxyProcess({ backendPort: echo.port, config: '[timeouts]\nidle = "2s"\n' });
      const base = proxy.fdCount();
      const closedBefore = (await proxy.status()).counters.connections_closed ?? 0;
      const mark = proxy.logs().length;
      // A separate process: once stopped its socket stays open (no FIN) and it sends nothing.
      const script = `const s=require('tls').connect({port:${proxy.port},host:'127.0.0.1',rejectUnauthorized:false},()=>s.write('ping'));s.once('data',()=>process.stdout.write('ready\\n'));setInterval(()=>{},1e6);`;
      const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        await once(child.stdout!, 'data');
        child.kill('SIGSTOP');
        const frozen = Date.now();
        const line = await proxy.waitForLog(/idle for more than 2000 ms/, 8000);
        const after = Date.now() - frozen;
        assert.ok(after >= 1500, `closed ${after} ms after the client froze, before the 2 s idle timeout`);
        assert.match(line, /"conn":"c\d+"/);
        assert.equal(logsAfter(proxy, mark, /idle for more than/).length, 1);
        const counters = (await proxy.status()).counters;
        assert.equal(counters.connections_closed, closedBefore + 1, 'counted in connections_closed');
        assert.equal(counters.closed_idle_timeout, 1, 'counted as closed_idle_timeout');
        await eventually(() => proxy.fdCount() <= base, 5000, 'the proxy fds back to their baseline');
      } finally {
        child.kill('SIGKILL');
        await echo.close();
      }
    },
  );
});

describe('running out of descriptors on accept', () => {
  let proxy: RunningProxy;
  after(() => proxy?.stop());

  test(
    'with its descriptor limit lowered by prlimit the proxy pauses accepting on EMFILE, logs it, and serves a new client once descriptors free up',
    { timeout: 30_000 },
    async () => {
      const echo = await echoBackend();
      proxy = await startProxyProcess({ backendPort: echo.port, config: '[timeouts]\nhandshake = "60s"\n' });
      const hogs: net.Socket[] = [];
      try {
        // Node needs many descriptors while loading, so the limit drops only once the proxy is ready.
        const base = proxy.fdCount();
        const limit = base + 16;
        await promisify(execFile)('prlimit', ['--pid', String(proxy.pid), `--nofile=${limit}:${limit}`]);
        // Silent TCP clients sit in the handshake, each holding a descriptor of the proxy.
        for (let i = 0; i < 40; i++) {
          const s = net.connect(proxy.port, '127.0.0.1');
          s.on('error', () => {});
          hogs.push(s);
          await once(s, 'connect');
        }
        await proxy.waitForLog(/accept: EMFILE; pausing accepts/, 10_000);
        assert.ok(proxy.fdCount() >= limit - 1, `the proxy holds ${proxy.fdCount()} fds`);
        for (const s of hogs) s.destroy();
        await eventually(() => proxy.fdCount() <= base + 2, 10_000, 'the hogs closed by the proxy');
        const c = await tlsConnect(proxy.port);
        await roundTrip(c, 'served again');
        c.destroy();
      } finally {
        for (const s of hogs) s.destroy();
        await echo.close();
      }
    },
  );
});
