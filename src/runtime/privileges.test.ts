// Proves the privilege drop: started as root with user/group set, the proxy serves as that user, also after an in-place upgrade.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { describe, it } from 'node:test';
import { echoBackend } from '../testkit/backends.js';
import { CLI, makeCert, startProxyProcess, tempDir } from '../testkit/proxy-process.js';

const run = promisify(execFile);

/** Real, effective, saved and filesystem uid (or gid) of a process, from /proc. */
function ids(pid: number, which: 'Uid' | 'Gid'): number[] {
  const line = fs
    .readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${which}:`))!;
  return line.split(/\s+/).slice(1).map(Number);
}

function echo(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => s.write(text));
    let got = '';
    s.on('data', (d: Buffer) => {
      got += d.toString();
      if (got.length >= text.length) {
        s.destroy();
        resolve(got);
      }
    });
    s.once('error', reject);
  });
}

describe('privilege drop', () => {
  it('runs as the configured user and group once bound, and stays so across an upgrade', async () => {
    assert.equal(process.getuid?.(), 0, 'this test needs root (CI runs as root)');
    const nobody = Number((await run('id', ['-u', 'nobody'])).stdout.trim());
    const nogroup = Number((await run('getent', ['group', 'nogroup'])).stdout.split(':')[2]);
    const dir = tempDir('privileges');
    fs.chmodSync(dir, 0o755);
    const cert = await makeCert(dir, 'ec');
    fs.chmodSync(cert.keyFile, 0o644); // the upgraded image re-reads it as nobody
    const backend = await echoBackend();
    // As /run/ironsocket: a directory only root can create (its parent is root's, 0755), which the drop hands to nobody.
    const adminSocket = `${dir}/ironsocket/admin.sock`;
    const proxy = await startProxyProcess({
      backendPort: backend.port,
      cert,
      args: ['--ktls', 'off', '--admin-socket', adminSocket],
      config: 'user = "nobody"\ngroup = "nogroup"\n',
    });
    fs.chmodSync(proxy.dir, 0o755); // the upgraded image re-reads its config file there as nobody
    try {
      assert.deepEqual(ids(proxy.pid, 'Uid'), [nobody, nobody, nobody, nobody]);
      assert.deepEqual(ids(proxy.pid, 'Gid'), [nogroup, nogroup, nogroup, nogroup]);
      assert.equal(fs.statSync(adminSocket).uid, nobody, 'the admin socket belongs to the new user');
      assert.equal(fs.statSync(`${dir}/ironsocket`).uid, nobody, 'and so does its directory');
      assert.equal(await echo(proxy.port, 'as nobody'), 'as nobody');
      const { stdout } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', adminSocket]);
      assert.equal((JSON.parse(stdout) as { ok: boolean }).ok, true, stdout);
      assert.deepEqual(ids(proxy.pid, 'Uid'), [nobody, nobody, nobody, nobody]);
      assert.equal(await echo(proxy.port, 'after the upgrade'), 'after the upgrade');
    } finally {
      await proxy.stop();
      await backend.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('starts accepting only once it runs as the configured user, so no client is served by root', async () => {
    assert.equal(process.getuid?.(), 0, 'this test needs root (CI runs as root)');
    const nobody = Number((await run('id', ['-u', 'nobody'])).stdout.trim());
    const backend = await echoBackend();
    const proxy = await startProxyProcess({ backendPort: backend.port, args: ['--ktls', 'off'], config: 'user = "nobody"\ngroup = "nogroup"\n' });
    try {
      const logs = proxy.logs();
      const dropped = logs.findIndex((l) => /"msg":"running as uid /.test(l));
      const accepting = logs.findIndex((l) => /"msg":"accepting connections"/.test(l));
      assert.ok(dropped >= 0 && accepting > dropped, `drop, then accept:\n${logs.join('\n')}`);
      assert.equal((JSON.parse(logs[accepting]!) as { uid: number }).uid, nobody, 'the process that resumes accepting is no longer root');
      assert.equal(await echo(proxy.port, 'first client'), 'first client');
    } finally {
      await proxy.stop();
      await backend.close();
    }
  });

  it('warns at start when the user it switched to could not exec the script in an upgrade', async () => {
    assert.equal(process.getuid?.(), 0, 'this test needs root (CI runs as root)');
    // The script reached through a directory only root may enter, as a checkout under /root would be.
    const hidden = tempDir('privileges-hidden');
    fs.chmodSync(hidden, 0o700);
    const script = `${hidden}/ironsocket`;
    fs.symlinkSync(CLI, script);
    const backend = await echoBackend();
    const started = async (entry: string) => {
      const proxy = await startProxyProcess({ entry, backendPort: backend.port, args: ['--ktls', 'off'], config: 'user = "nobody"\ngroup = "nogroup"\n' });
      const warned = proxy.logs().filter((l) => /in-place upgrades will fail/.test(l));
      await proxy.stop();
      return warned;
    };
    try {
      const warned = await started(script);
      assert.equal(warned.length, 1, 'one warning');
      assert.match(warned[0]!, new RegExp(`cannot reach the script ${script.replace(/[.]/g, '\\.')} \\(EACCES\\)`));
      assert.deepEqual(await started(CLI), [], 'none where it can');
    } finally {
      await backend.close();
      fs.rmSync(hidden, { recursive: true, force: true });
    }
  });

  it('refuses to start when the user does not exist', async () => {
    const backend = await echoBackend();
    await assert.rejects(
      startProxyProcess({ backendPort: backend.port, args: ['--ktls', 'off'], config: 'user = "no-such-user-here"\n' }),
      /user "no-such-user-here" does not exist/,
    );
    await backend.close();
  });
});
