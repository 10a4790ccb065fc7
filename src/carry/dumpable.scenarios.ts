// A proxy started as root that drops to a user stays non-dumpable (/proc/PID/mem root's) before and after an upgrade's exec, and so does its bridge.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { modeArgs, type Mode } from '../scenarios/real-clients.scenarios.js';
import { echoStream, type EchoStream } from '../testkit/echo-stream.js';
import { laneWithEchoBackend } from '../testkit/lane.js';
import { CLI, FAULT_CLI, childProcesses, eventually, makeCert, startProxyProcess, tempDir } from '../testkit/proxy-process.js';

const run = promisify(execFile);

/** The owner of /proc/PID/mem: root while the process is non-dumpable, else the process's own uid. */
function memOwner(pid: number): number {
  return fs.statSync(`/proc/${pid}/mem`).uid;
}

/** Real, effective, saved and filesystem uid of a process. */
function uids(pid: number): number[] {
  const line = fs
    .readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('Uid:'))!;
  return line.split(/\s+/).slice(1).map(Number);
}

function cmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return '';
  }
}

export function dumpableScenarios(mode: Mode): void {
  const echo = laneWithEchoBackend(mode);

  test(`a proxy started as root and running as nobody is non-dumpable before and after an in-place upgrade, and so is its upgrade bridge (${mode} mode)`, async () => {
    assert.equal(process.getuid?.(), 0, 'this test needs root (CI and the kTLS guest run as root)');
    const nobody = Number((await run('id', ['-u', 'nobody'])).stdout.trim());
    const dir = tempDir('dumpable');
    fs.chmodSync(dir, 0o755);
    const cert = await makeCert(dir, 'ec');
    fs.chmodSync(cert.keyFile, 0o644); // the upgraded image re-reads it as nobody
    // As /run/ironsocket: a directory only root can create (its parent is root's, 0755), which the drop hands to
    // nobody; root's CLI trusts a proxy of another uid only there (src/admin/client.ts).
    const adminSocket = `${dir}/ironsocket/admin.sock`;
    // The test-only entry holds the bridge still for 4 s once it is up, long enough to look at it.
    const proxy = await startProxyProcess({
      backendPort: echo().port,
      cert,
      args: [...modeArgs(mode), '--admin-socket', adminSocket],
      config: 'user = "nobody"\ngroup = "nogroup"\n',
      entry: FAULT_CLI,
      env: { IRONSOCKET_FAULT_BRIDGE: 'hold:4000' },
    });
    fs.chmodSync(proxy.dir, 0o755); // the upgraded image re-reads its config file there as nobody
    const open: EchoStream[] = [];
    try {
      assert.deepEqual(uids(proxy.pid), [nobody, nobody, nobody, nobody]);
      assert.equal(memOwner(proxy.pid), 0, 'before the upgrade: /proc/PID/mem is root-owned (non-dumpable)');
      open.push(await echoStream(proxy.port, `dumpable-${mode}`, 1024, 20));

      const upgrading = run(process.execPath, [CLI, 'upgrade', '--admin-socket', adminSocket, '--timeout', '300']);
      // The bridge names itself once it has made itself non-dumpable, and then holds still.
      let bridge = 0;
      await eventually(
        () => {
          bridge = childProcesses(proxy.pid).find((pid) => cmdline(pid).startsWith('ironsocket-bridge')) ?? 0;
          return bridge !== 0;
        },
        120_000,
        'the upgrade bridge',
      );
      assert.deepEqual(uids(bridge), [nobody, nobody, nobody, nobody], 'the bridge runs as nobody');
      assert.equal(memOwner(bridge), 0, 'the bridge: /proc/PID/mem is root-owned (non-dumpable)');

      const { stdout } = await upgrading;
      const outcome = JSON.parse(stdout) as { ok: boolean; pid: number; generation: number };
      assert.equal(outcome.ok, true, stdout);
      assert.equal(outcome.pid, proxy.pid);
      assert.deepEqual(uids(proxy.pid), [nobody, nobody, nobody, nobody]);
      assert.equal(memOwner(proxy.pid), 0, 'after the upgrade (exec as nobody): /proc/PID/mem is still root-owned');
      const r = await open[0]!.finish();
      assert.ok(r.ok && r.received > 0, `${r.seed}: ${r.errors.join('; ')}`);
    } finally {
      for (const s of open) s.abort();
      await proxy.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}
