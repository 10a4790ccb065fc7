// In-place upgrades under load: 200 verified streams survive 5 consecutive execs; new clients are served meanwhile (their session tickets good on either side); refusal, exec or bridge failure leave the proxy serving.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { modeArgs, type Mode } from '../scenarios/real-clients.scenarios.js';
import { echoBackend, type Backend } from '../testkit/backends.js';
import { echoStream, type EchoStream } from '../testkit/echo-stream.js';
import { CLI, FAULT_CLI, childProcesses, eventually, startProxyProcess, tempDir, type RunningProxy } from '../testkit/proxy-process.js';
import { assertLaneKernel } from '../testkit/lane.js';
import { VERSIONS, visit, type TlsVersion } from '../testkit/resume.js';

const run = promisify(execFile);

interface Outcome {
  ok: boolean;
  pid: number;
  generation: number;
  moved?: number;
  closedDuringUpgrade?: number;
  closedDuringUpgradeWithWarning?: number;
  stallMs?: number;
  error?: string;
}

async function upgradeCli(proxy: RunningProxy): Promise<{ code: number; outcome?: Outcome; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket, '--timeout', '300']);
    return { code: 0, outcome: JSON.parse(stdout) as Outcome, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, outcome: err.stdout ? (JSON.parse(err.stdout) as Outcome) : undefined, stderr: err.stderr };
  }
}

/** How long the test-only entry holds the old image just before execve: the window in which only the bridge can serve. */
const EXEC_HOLD_MS = 6000;

/**
 * Starts an upgrade (its CLI's answer is the promise returned) and, once every connection is in the bridge and the
 * image holds still before execve, opens `n` new verified streams: they must be served (an echo back) before the
 * image gets to exec, which it logs. Without the bridge accepting, nobody could even finish their handshakes then.
 */
async function clientsDuringHold(proxy: RunningProxy, n: number, seed: string): Promise<{ upgrading: ReturnType<typeof upgradeCli>; fresh: EchoStream[] }> {
  const upgrading = upgradeCli(proxy);
  await proxy.waitForLog(/"msg":"every connection is in the upgrade bridge"/, 120_000);
  const fresh = await Promise.all(Array.from({ length: n }, (_, i) => echoStream(proxy.port, `${seed}-${i}`, 1024, 20)));
  await eventually(() => fresh.every((s) => s.received() > 0), 60_000, 'an echo on every new connection');
  assert.ok(!proxy.logs().some((l) => /"msg":"exec"/.test(l)), 'the new clients were served while the image was held before execve');
  return { upgrading, fresh };
}

export function upgradeScenarios(mode: Mode, pace: { chunk: number; everyMs: number }): void {
  let echo: Backend;
  before(async () => {
    assertLaneKernel(mode);
    echo = await echoBackend();
  });
  after(async () => {
    await echo?.close();
  });

  test(`200 verified streams spread over 2 relay workers survive 5 consecutive in-place upgrades with the same PID, no reset and no new handshake (${mode} mode)`, async () => {
    const proxy = await startProxyProcess({ backendPort: echo.port, args: [...modeArgs(mode), '--workers', '2'] });
    /** Connections per relay worker, from status. */
    const spread = async () => {
      const s = await proxy.status();
      const per = [0, 0];
      for (const c of s.connections) per[(c as { worker?: number }).worker ?? -1]! += 1;
      return per;
    };
    const acceptedBefore = echo.accepted;
    const streams: EchoStream[] = [];
    try {
      for (let i = 0; i < 200; i += 20) {
        streams.push(...(await Promise.all(Array.from({ length: 20 }, (_, j) => echoStream(proxy.port, `up-${mode}-${i + j}`, pace.chunk, pace.everyMs)))));
      }
      const baseline = (await proxy.status()).counters.handshakes_ok;
      assert.equal(baseline, 200);
      assert.ok(
        (await spread()).every((n) => n >= 50),
        `connections per worker: ${(await spread()).join(', ')}`,
      );
      const fdsAfter: number[] = [];
      for (let k = 1; k <= 5; k++) {
        const before = streams.map((s) => s.received());
        const r = await upgradeCli(proxy);
        assert.equal(r.code, 0, `upgrade ${k}: ${r.stderr}`);
        assert.equal(r.outcome?.ok, true);
        assert.equal(r.outcome?.pid, proxy.pid, 'the PID never changes');
        assert.equal(r.outcome?.generation, k + 1);
        const warnings = () =>
          proxy
            .logs()
            .filter((l) => /"level":(40|50|60)/.test(l))
            .slice(-20)
            .join('\n');
        assert.equal(r.outcome?.moved, 200, `upgrade ${k} moved ${r.outcome?.moved} connections; proxy warnings:\n${warnings()}`);
        assert.equal(typeof r.outcome?.stallMs, 'number');
        // Every stream is still flowing after this upgrade.
        const deadline = Date.now() + 60_000;
        while (streams.some((s, i) => s.received() <= before[i]!) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 100));
        assert.ok(
          streams.every((s, i) => s.received() > before[i]!),
          `streams stalled after upgrade ${k}`,
        );
        fdsAfter.push(proxy.fdCount());
        const per = await spread();
        assert.equal(
          per.reduce((a, b) => a + b, 0),
          200,
        );
        assert.ok(
          per.every((n) => n >= 50),
          `after upgrade ${k}, connections per worker: ${per.join(', ')}`,
        );
      }
      // Only the carried fds cross exec: the count does not creep up from one generation to the next.
      assert.ok(Math.max(...fdsAfter) - Math.min(...fdsAfter) <= 2, `open fds after each upgrade: ${fdsAfter.join(', ')}`);
      const results = await Promise.all(streams.map((s) => s.finish()));
      for (const r of results) assert.ok(r.ok, `${r.seed}: sent ${r.sent}, received ${r.received}, mismatch at ${r.mismatchAt}, errors ${r.errors.join('; ')}`);
      const status = await proxy.status();
      assert.equal(status.pid, proxy.pid);
      assert.equal(status.counters.handshakes_ok, 200, 'no new handshakes');
      assert.equal(status.counters.upgrades, 5);
      assert.equal(echo.accepted - acceptedBefore, 200, 'the backend saw no reconnection');
      if (mode === 'kernel') for (const c of status.connections) assert.equal(c.mode, 'kernel');
      // Each upgrade's bridge exited and was collected by the new image: no process (or zombie) is left behind.
      await eventually(() => childProcesses(proxy.pid).length === 0, 10_000, 'the upgrade bridges to be gone');
    } finally {
      for (const s of streams) s.abort();
      await proxy.stop();
    }
  });

  test(`an upgrade whose pre-flight check fails is refused and the running proxy keeps serving untouched (${mode} mode)`, async () => {
    const dir = tempDir('preflight');
    const config = path.join(dir, 'ironsocket.toml');
    fs.writeFileSync(config, '[timeouts]\nhandshake = "10s"\n');
    const proxy = await startProxyProcess({ backendPort: echo.port, args: [...modeArgs(mode), '--config', config] });
    let s: EchoStream | undefined;
    try {
      s = await echoStream(proxy.port, `preflight-${mode}`, 1024, 20);
      fs.writeFileSync(config, '[timeouts]\nhandshake = "soon"\n');
      const r = await upgradeCli(proxy);
      assert.equal(r.code, 1);
      assert.equal(r.outcome?.ok, false);
      assert.match(r.outcome?.error ?? '', /pre-flight check failed.*timeouts\.handshake/s);
      assert.match(r.stderr, /keeps serving/);
      const status = await proxy.status();
      assert.equal(status.pid, proxy.pid);
      assert.equal((status as { generation?: number }).generation, 1);
      const got = s.received();
      await new Promise((res) => setTimeout(res, 500));
      assert.ok(s.received() > got, 'the stream keeps flowing');
      const done = await s.finish();
      assert.ok(done.ok, done.errors.join('; '));
    } finally {
      s?.abort();
      await proxy.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test(`when execve itself fails the old image resumes every relay and accepting, and reports the failure (${mode} mode)`, async () => {
    const proxy = await startProxyProcess({
      backendPort: echo.port,
      args: modeArgs(mode),
      entry: FAULT_CLI,
      env: { IRONSOCKET_FAULT_EXEC_PATH: '/nonexistent/node' },
    });
    const open: EchoStream[] = [];
    try {
      const s = await echoStream(proxy.port, `execfail-${mode}`, 1024, 20);
      open.push(s);
      const r = await upgradeCli(proxy);
      assert.equal(r.code, 1);
      assert.match(r.outcome?.error ?? '', /execve\(\/nonexistent\/node\) failed: ENOENT/);
      const got = s.received();
      await new Promise((res) => setTimeout(res, 500));
      assert.ok(s.received() > got, 'the relay resumed');
      const fresh = await echoStream(proxy.port, `execfail-new-${mode}`, 1024, 20);
      open.push(fresh);
      await new Promise((res) => setTimeout(res, 300));
      const results = await Promise.all([s.finish(), fresh.finish()]);
      for (const x of results) assert.ok(x.ok && x.received > 0, `${x.seed}: ${x.errors.join('; ')}`);
      await eventually(() => childProcesses(proxy.pid).length === 0, 10_000, 'the upgrade bridge to be gone');
    } finally {
      for (const x of open) x.abort();
      await proxy.stop();
    }
  });

  test(`clients that connect while the image is about to exec are handshaken and served by the bridge, then carried into the new image (${mode} mode)`, async () => {
    const proxy = await startProxyProcess({
      backendPort: echo.port,
      args: modeArgs(mode),
      entry: FAULT_CLI,
      env: { IRONSOCKET_FAULT_EXEC_HOLD_MS: String(EXEC_HOLD_MS) },
    });
    const open: EchoStream[] = [];
    try {
      open.push(await echoStream(proxy.port, `door-old-${mode}`, 1024, 20));
      const { upgrading, fresh } = await clientsDuringHold(proxy, 3, `door-new-${mode}`);
      open.push(...fresh);
      const r = await upgrading;
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.outcome?.generation, 2);
      assert.equal(r.outcome?.moved, 4, 'the connection moved into the bridge and the three it accepted came back');
      const later = await echoStream(proxy.port, `door-later-${mode}`, 1024, 20);
      open.push(later);
      const status = await proxy.status();
      assert.equal(status.connections.length, 5);
      assert.equal(new Set(status.connections.map((c) => c.id)).size, 5, `connection ids are unique: ${status.connections.map((c) => c.id).join(', ')}`);
      assert.equal(status.counters.connections_accepted, 5);
      assert.equal(status.counters.handshakes_ok, 5);
      const results = await Promise.all(open.map((x) => x.finish()));
      for (const x of results) assert.ok(x.ok && x.received > 0, `${x.seed}: ${x.errors.join('; ')}`);
      await eventually(() => childProcesses(proxy.pid).length === 0, 10_000, 'the upgrade bridge to be gone');
    } finally {
      for (const x of open) x.abort();
      await proxy.stop();
    }
  });

  test(`one set of session ticket keys across the bridge's window: a ticket from before the upgrade resumes on the bridge while the image is held before execve, and a ticket the bridge issued resumes on the new image; the bridge's handshakes are counted (TLS 1.3 and 1.2, ${mode} mode)`, async () => {
    const proxy = await startProxyProcess({
      backendPort: echo.port,
      args: modeArgs(mode),
      entry: FAULT_CLI,
      env: { IRONSOCKET_FAULT_EXEC_HOLD_MS: String(2 * EXEC_HOLD_MS) },
    });
    const open: EchoStream[] = [];
    try {
      const first = {} as Record<TlsVersion, Buffer>;
      for (const version of VERSIONS) {
        const v = await visit(proxy.port, version, undefined, 1024);
        assert.equal(v.resumed, false);
        first[version] = v.sessions[0]!;
      }
      open.push(await echoStream(proxy.port, `tickets-old-${mode}`, 1024, 20));
      const upgrading = upgradeCli(proxy);
      await proxy.waitForLog(/"msg":"every connection is in the upgrade bridge"/, 120_000);
      const fromBridge = {} as Record<TlsVersion, Buffer>;
      for (const version of VERSIONS) {
        const resumed = await visit(proxy.port, version, first[version], 1024);
        assert.equal(resumed.resumed, true, `${version}: the ticket from before the upgrade resumes on the bridge`);
        assert.ok(resumed.echoed, `${version}: every byte relayed after resuming on the bridge`);
        const fresh = await visit(proxy.port, version, undefined, 1024);
        assert.equal(fresh.resumed, false);
        fromBridge[version] = fresh.sessions[0]!;
      }
      assert.ok(!proxy.logs().some((l) => /"msg":"exec"/.test(l)), 'the bridge served them while the image was held before execve');
      const r = await upgrading;
      assert.equal(r.code, 0, r.stderr);
      // The bridge's own clients ended there, cleanly (close_notify both ways): counted, none with a warning.
      assert.ok((r.outcome?.closedDuringUpgrade ?? 0) > 0, JSON.stringify(r.outcome));
      assert.equal(r.outcome?.closedDuringUpgradeWithWarning, 0, JSON.stringify(r.outcome));
      for (const version of VERSIONS) {
        const v = await visit(proxy.port, version, fromBridge[version], 1024);
        assert.equal(v.resumed, true, `${version}: the ticket the bridge issued resumes on the new image`);
        assert.ok(v.echoed, `${version}: every byte relayed after resuming on the new image`);
      }
      const c = (await proxy.status()).counters;
      // Full: 2 before, the stream, 2 on the bridge; resumed: 2 on the bridge, 2 after.
      assert.deepEqual([c.handshakes_full, c.handshakes_resumed, c.handshakes_ticket_unknown ?? 0], [5, 4, 0], "the bridge's handshakes counted in the image");
      const results = await Promise.all(open.map((x) => x.finish()));
      for (const x of results) assert.ok(x.ok && x.received > 0, `${x.seed}: ${x.errors.join('; ')}`);
    } finally {
      for (const x of open) x.abort();
      await proxy.stop();
    }
  });

  test(`no client the bridge accepted during an upgrade is lost when execve then fails: the old image takes them all back (${mode} mode)`, async () => {
    const proxy = await startProxyProcess({
      backendPort: echo.port,
      args: modeArgs(mode),
      entry: FAULT_CLI,
      env: { IRONSOCKET_FAULT_EXEC_PATH: '/nonexistent/node', IRONSOCKET_FAULT_EXEC_HOLD_MS: String(EXEC_HOLD_MS) },
    });
    const open: EchoStream[] = [];
    try {
      open.push(await echoStream(proxy.port, `doorfail-old-${mode}`, 1024, 20));
      const { upgrading, fresh } = await clientsDuringHold(proxy, 3, `doorfail-new-${mode}`);
      open.push(...fresh);
      const r = await upgrading;
      assert.equal(r.code, 1);
      assert.match(r.outcome?.error ?? '', /execve\(\/nonexistent\/node\) failed: ENOENT/);
      const before = open.map((x) => x.received());
      await eventually(() => open.every((x, i) => x.received() > before[i]!), 30_000, 'every stream flowing after the failed upgrade');
      const later = await echoStream(proxy.port, `doorfail-later-${mode}`, 1024, 20);
      open.push(later);
      const status = await proxy.status();
      assert.equal(status.pid, proxy.pid);
      assert.equal((status as { generation?: number }).generation, 1);
      assert.equal(status.connections.length, 5, 'the old image lists the three the bridge accepted');
      assert.equal(new Set(status.connections.map((c) => c.id)).size, 5, `connection ids are unique: ${status.connections.map((c) => c.id).join(', ')}`);
      assert.equal(status.counters.connections_accepted, 5);
      assert.equal(status.counters.handshakes_ok, 5);
      const results = await Promise.all(open.map((x) => x.finish()));
      for (const x of results) assert.ok(x.ok && x.received > 0, `${x.seed}: ${x.errors.join('; ')}`);
      await eventually(() => childProcesses(proxy.pid).length === 0, 10_000, 'the upgrade bridge to be gone');
    } finally {
      for (const x of open) x.abort();
      await proxy.stop();
    }
  });

  test(`an upgrade bridge that dies before taking any connection fails the upgrade and the proxy keeps serving (${mode} mode)`, async () => {
    const proxy = await startProxyProcess({ backendPort: echo.port, args: modeArgs(mode), entry: FAULT_CLI, env: { IRONSOCKET_FAULT_BRIDGE: 'exit' } });
    const open: EchoStream[] = [];
    try {
      const s = await echoStream(proxy.port, `bridgefail-${mode}`, 1024, 20);
      open.push(s);
      const r = await upgradeCli(proxy);
      assert.equal(r.code, 1);
      assert.match(r.outcome?.error ?? '', /upgrade bridge went away.*exited with code 70/);
      const got = s.received();
      await new Promise((res) => setTimeout(res, 500));
      assert.ok(s.received() > got, 'the stream keeps flowing');
      const fresh = await echoStream(proxy.port, `bridgefail-new-${mode}`, 1024, 20);
      open.push(fresh);
      const status = await proxy.status();
      assert.equal(status.pid, proxy.pid);
      assert.equal(status.connections.length, 2);
      const results = await Promise.all([s.finish(), fresh.finish()]);
      for (const x of results) assert.ok(x.ok && x.received > 0, `${x.seed}: ${x.errors.join('; ')}`);
    } finally {
      for (const x of open) x.abort();
      await proxy.stop();
    }
  });
}
