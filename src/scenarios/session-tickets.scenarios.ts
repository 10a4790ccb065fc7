// Session tickets on a running proxy with two handshake workers: every ticket resumes on either worker, across upgrades, renewed each time; per lane (src/testkit/lanes.ts).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { echoBackend, httpBackend, type Backend } from '../testkit/backends.js';
import { assertLaneKernel } from '../testkit/lane.js';
import { parsePromText } from '../testkit/prom-text.js';
import { eventually, makeCert, startProxyProcess, tempDir, type RunningProxy } from '../testkit/proxy-process.js';
import { VERSIONS, onWorker, upgrade, visitProxy, type TlsVersion } from '../testkit/resume.js';
import { sTime } from '../testkit/s-time.js';
import { openssl, waitForOutput } from '../testkit/zero-rtt.js';
import { modeArgs, type Mode } from './real-clients.scenarios.js';

const UPGRADES = 3;

export function sessionTicketScenarios(mode: Mode): void {
  const dir = tempDir('tickets');
  let cert: { certFile: string; keyFile: string };
  let echo: Backend;
  const start = (extra: string[] = []) =>
    startProxyProcess({ backendPort: echo.port, cert, args: [...modeArgs(mode), '--workers', '2', ...extra], config: `[metrics]\nlisten = "127.0.0.1:0"\n` });

  before(async () => {
    assertLaneKernel(mode);
    cert = await makeCert(dir, 'ec');
    echo = await echoBackend();
  });
  after(async () => {
    await echo?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Resumes `session` on handshake worker `worker`: it must resume, relay every byte back, and get a fresh ticket. */
  async function resumesOn(proxy: RunningProxy, worker: 0 | 1, version: TlsVersion, session: Buffer, what: string) {
    const v = await onWorker(proxy, worker, () => visitProxy(proxy, version, session));
    assert.equal(v.logged.handshaker, worker, `${what}: served by handshake worker ${worker}`);
    assert.equal(v.resumed, true, `${what}: resumed on worker ${worker}`);
    assert.equal(v.logged.resumed, true, `${what}: the proxy logged it resumed`);
    assert.equal(v.echoed, true, `${what}: every byte relayed both ways after the resumption`);
    assert.ok(v.sessions.length >= 1, `${what}: a fresh ticket`);
    return v;
  }

  test(`the ticket of the first connection after start (and after each upgrade) resumes on both handshake workers, and tickets from before ${UPGRADES} in-place upgrades resume on both after each (TLS 1.3 and 1.2, ${mode} mode)`, async (t) => {
    const proxy = await start();
    try {
      // The very first connection, and its ticket used at once: before, the second worker had keys of its own.
      const first: Record<TlsVersion, Buffer> = {} as Record<TlsVersion, Buffer>;
      for (const version of VERSIONS) {
        const v = await visitProxy(proxy, version);
        assert.equal(v.resumed, false);
        first[version] = v.sessions[0]!;
        for (const w of [1, 0] as const) await resumesOn(proxy, w, version, first[version], `${version} first ticket`);
      }
      let attempts = 0;
      for (let k = 1; k <= UPGRADES; k++) {
        assert.equal((await upgrade(proxy)).generation, k + 1);
        for (const version of VERSIONS) {
          // The first connection after the upgrade: its ticket resumes on the other worker at once.
          const fresh = await visitProxy(proxy, version);
          assert.equal(fresh.logged.resumed, false);
          await resumesOn(proxy, 1, version, fresh.sessions[0]!, `${version} first ticket after upgrade ${k}`);
          for (const w of [0, 1] as const) {
            await resumesOn(proxy, w, version, first[version], `${version} after upgrade ${k}`);
            attempts++;
          }
        }
      }
      const c = (await proxy.status()).counters;
      assert.equal(c.handshakes_ticket_unknown, undefined, 'no ticket was ever unknown');
      t.diagnostic(
        `${attempts} resumptions after ${UPGRADES} upgrades with tickets from the first connections, all resumed; full ${c.handshakes_full}, resumed ${c.handshakes_resumed}`,
      );
    } finally {
      await proxy.stop();
    }
  });

  test(`a resumed handshake brings a fresh ticket, which resumes in turn on the other worker, data relayed exactly (TLS 1.3: a NewSessionTicket after it; TLS 1.2: one in the abbreviated flight; ${mode} mode)`, async () => {
    const proxy = await start();
    try {
      for (const version of VERSIONS) {
        const full = await visitProxy(proxy, version);
        let session = full.sessions.at(-1)!;
        let ticket = full.ticket!;
        for (let i = 0; i < 4; i++) {
          const w = (i % 2) as 0 | 1;
          const v = await resumesOn(proxy, w, version, session, `${version} renewal ${i + 1}`);
          if (version === 'TLSv1.3') assert.equal(v.sessions.length, 1, 'one NewSessionTicket after a resumed TLS 1.3 handshake');
          assert.ok(v.ticket && !v.ticket.equals(ticket), `${version} renewal ${i + 1}: a ticket other than the one presented`);
          session = v.sessions.at(-1)!;
          ticket = v.ticket;
        }
      }
      // A long TLS 1.2 exchange after the abbreviated handshake: its server Finished came before the client's.
      const t12 = await visitProxy(proxy, 'TLSv1.2');
      const long = await onWorker(proxy, 1, () => visitProxy(proxy, 'TLSv1.2', t12.sessions[0], 1 << 20));
      assert.deepEqual([long.resumed, long.echoed], [true, true], 'TLS 1.2: 1 MiB each way after a resumption');
      const established = proxy.logs().filter((l) => l.includes('"msg":"established"') && l.includes('"resumed":true'));
      assert.ok(
        established.some((l) => /"version":"TLSv1\.2".*"txSeq":"1".*"rxSeq":"1"/.test(l)),
        'TLS 1.2 resumed: our Finished and theirs, one record each',
      );
      assert.ok(
        established.some((l) => /"version":"TLSv1\.3".*"txSeq":"1".*"rxSeq":"0"/.test(l)),
        'TLS 1.3 resumed: one NewSessionTicket under the application key',
      );
    } finally {
      await proxy.stop();
    }
  });

  test(`openssl s_client resumes with -sess_in a session it kept with -sess_out, across an upgrade, on both workers (TLS 1.3 and 1.2, ${mode} mode)`, async () => {
    const proxy = await start();
    try {
      const sclient = async (flag: string, file: string, extra: string) => {
        const args = ['s_client', '-connect', `127.0.0.1:${proxy.port}`, '-servername', 'localhost', flag, file, extra];
        const child = spawn('openssl', args, { stdio: ['pipe', 'pipe', 'pipe'] });
        let out = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString('latin1')));
        child.stderr.on('data', (d: Buffer) => (out += d.toString('latin1')));
        const exited = new Promise((r) => child.once('exit', r));
        const killer = setTimeout(() => child.kill('SIGKILL'), 60_000);
        try {
          // s_client prints what it receives as it comes (and writes -sess_out as the ticket arrives, before the echo):
          // stdin stays open until the echo is back, then EOF ends the connection.
          child.stdin.write('ticket-please\n');
          await waitForOutput(child, /ticket-please/, 50_000);
        } finally {
          child.stdin.end();
          await exited;
          clearTimeout(killer);
        }
        return out;
      };
      for (const [version, flag] of [
        ['TLSv1.3', '-tls1_3'],
        ['TLSv1.2', '-tls1_2'],
      ] as const) {
        const file = path.join(dir, `s_client-${version}.pem`);
        const first = await sclient('-sess_out', file, flag);
        assert.match(first, /^New, TLSv1\.[23]/m);
        assert.match(first, /ticket-please/, 'echoed');
        assert.match((await openssl(['sess_id', '-in', file, '-noout', '-text'])).out, /TLS session ticket lifetime hint: 7200/);
        await upgrade(proxy);
        for (const w of [0, 1] as const) {
          const out = await onWorker(proxy, w, () => sclient('-sess_in', file, flag));
          assert.match(out, /^Reused, TLSv1\.[23]/m, `${version}: s_client reused its session on worker ${w}:\n${out.slice(-1500)}`);
          assert.match(out, /ticket-please/, `${version}: data echoed after the resumption`);
        }
      }
    } finally {
      await proxy.stop();
    }
  });

  test(`full and resumed handshakes are counted, in status and /metrics, and the counts continue across an upgrade (${mode} mode)`, async () => {
    const proxy = await start();
    try {
      const full = await visitProxy(proxy, 'TLSv1.3');
      await visitProxy(proxy, 'TLSv1.3', full.sessions[0]);
      await visitProxy(proxy, 'TLSv1.2', (await visitProxy(proxy, 'TLSv1.2')).sessions[0]);
      const before = (await proxy.status()).counters;
      assert.deepEqual([before.handshakes_full, before.handshakes_resumed, before.handshakes_ok], [2, 2, 4]);
      await upgrade(proxy);
      await visitProxy(proxy, 'TLSv1.3', full.sessions[0]);
      const s = await proxy.status();
      assert.deepEqual([s.counters.handshakes_full, s.counters.handshakes_resumed], [2, 3]);
      assert.equal(s.tickets?.source, 'generated');
      // Each image serves /metrics on a port of its own (port 0): the last one logged is this image's.
      const served = proxy.logs().filter((l) => l.includes('"msg":"serving metrics"'));
      const url = /"metrics":"(http:[^"]+)"/.exec(served.at(-1) ?? '')?.[1];
      assert.ok(url, 'the metrics address is logged');
      const text = await (await fetch(url)).text();
      const family = parsePromText(text).get('ironsocket_handshakes_completed_total');
      const value = (kind: string) => family?.samples.find((x) => x.labels.kind === kind)?.value;
      assert.deepEqual([value('full'), value('resumed')], [2, 3]);
    } finally {
      await proxy.stop();
    }
  });

  test(`openssl s_time's back-to-back connections (an answer read, then a close without close_notify) all complete their handshakes, full with -new and resumed with -reuse, two clients at once, none counted failed (${mode} mode)`, async () => {
    const http = await httpBackend(Buffer.from('OK\n'));
    const proxy = await startProxyProcess({ backendPort: http.port, cert, args: [...modeArgs(mode), '--workers', '2'] });
    try {
      for (const reuse of [false, true]) {
        const before = (await proxy.status()).counters;
        const runs = await Promise.all([0, 1].map(() => sTime(proxy.port, { reuse, seconds: 2 })));
        const count = runs.reduce((n, r) => n + r.count, 0);
        const full = runs.reduce((n, r) => n + r.full, 0);
        assert.ok(count >= 4, `s_time made ${count} connections`);
        // -reuse: each process's first connection is full (it has no ticket yet); every later one resumes.
        assert.equal(full, reuse ? 0 : count, `${reuse ? '-reuse' : '-new'}: ${full} of ${count} full handshakes`);
        const delta = (c: Record<string, number>, k: string) => (c[k] ?? 0) - (before[k] ?? 0);
        let now = before;
        // Every connection accepted and none still in its handshake: each one either failed or was established.
        const settled = (c: Record<string, number>) => delta(c, 'connections_accepted') >= count && c.handshakes_in_progress === 0;
        await eventually(async () => settled((now = (await proxy.status()).counters)), 20_000, 'every handshake over');
        const failed = Object.keys(now).filter((k) => k.startsWith('handshake_failed') && delta(now, k) > 0);
        assert.deepEqual(
          failed.map((k) => `${k}: ${delta(now, k)}`),
          [],
          'no handshake failed',
        );
        if (reuse) {
          assert.equal(delta(now, 'handshakes_resumed'), count, 'every marked -reuse connection resumed');
          assert.equal(delta(now, 'handshakes_full'), 2, "only each process's first connection was full");
        } else assert.equal(delta(now, 'handshakes_full'), count, 'every -new connection a full handshake');
      }
    } finally {
      await proxy.stop();
      await http.close();
    }
  });
}
