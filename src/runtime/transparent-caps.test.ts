// Transparent listeners are checked for CAP_NET_ADMIN at start and by `check`: refused with the reason and the fix, never failing per connection.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { echoBackend, type Backend } from '../testkit/backends.js';
import { CLI, makeCert, startProxyProcess, tempDir } from '../testkit/proxy-process.js';
import { CAP_NET_ADMIN, effectiveCaps, transparentProblem } from './capabilities.js';

const run = promisify(execFile);
/** Root, but without CAP_NET_ADMIN and CAP_NET_RAW (gone from the bounding set, so from what exec grants). */
const WITHOUT_NET_ADMIN = ['setpriv', '--bounding-set', '-net_admin,-net_raw'];

let backend: Backend;
let dir: string;
let cert: { certFile: string; keyFile: string };
before(async () => {
  assert.equal(process.getuid?.(), 0, 'this test needs root (CI runs as root)');
  backend = await echoBackend();
  dir = tempDir('transparent-caps');
  cert = await makeCert(dir, 'ec');
});
after(async () => {
  await backend?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function config(extra = ''): string {
  return `${extra}[[listener]]
name = "tproxy"
listen = "127.0.0.1:0"
backend = "127.0.0.1:${backend.port}"
cert = ${JSON.stringify(cert.certFile)}
key = ${JSON.stringify(cert.keyFile)}
transparent = true
`;
}

/** Runs `ironsocket check` on a config file; exit code and everything it printed. */
async function check(toml: string, wrap: string[] = []): Promise<{ code: number; out: string }> {
  const file = path.join(dir, `check-${Math.random().toString(36).slice(2)}.toml`);
  fs.writeFileSync(file, toml);
  const cmd = [...wrap, process.execPath, CLI, 'check', '--config', file];
  try {
    const { stdout, stderr } = await run(cmd[0]!, cmd.slice(1));
    return { code: 0, out: stdout + stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, out: err.stdout + err.stderr };
  }
}

test('the capability check reads CapEff, passes with CAP_NET_ADMIN, and refuses without it or when dropping root to `user`', () => {
  const netAdmin = 1n << BigInt(CAP_NET_ADMIN);
  assert.equal(effectiveCaps('Name:\tx\nCapEff:\t0000000000001000\n'), netAdmin);
  const listeners = [
    { name: 'plain', transparent: false },
    { name: 'tproxy', transparent: true },
  ];
  assert.equal(transparentProblem({ listeners: [listeners[0]!] }, 0n, 1000), undefined, 'no transparent listener: nothing needed');
  assert.equal(transparentProblem({ listeners }, netAdmin, 1000), undefined, 'e.g. systemd User= with AmbientCapabilities=CAP_NET_ADMIN');
  assert.equal(transparentProblem({ listeners, user: 'root' }, netAdmin, 0), undefined);
  assert.match(transparentProblem({ listeners }, 0n, 1000) ?? '', /listener tproxy\) needs CAP_NET_ADMIN .* lacks it .*AmbientCapabilities=CAP_NET_ADMIN/);
  assert.match(
    transparentProblem({ listeners, user: 'nobody' }, netAdmin, 0) ?? '',
    /switching to user = "nobody" after binding drops it; .*AmbientCapabilities=CAP_NET_ADMIN/,
  );
});

test('a proxy without CAP_NET_ADMIN refuses to start with a transparent listener, saying why and how to fix it', async () => {
  await assert.rejects(
    startProxyProcess({ backendPort: backend.port, noListenFlags: true, config: config(), wrap: WITHOUT_NET_ADMIN }),
    /cannot start: transparent = true \(listener tproxy\) needs CAP_NET_ADMIN .* lacks it .*AmbientCapabilities=CAP_NET_ADMIN/,
  );
});

test('a root proxy that would drop to `user` refuses to start with a transparent listener', async () => {
  await assert.rejects(
    startProxyProcess({ backendPort: backend.port, noListenFlags: true, config: config('user = "nobody"\n\n') }),
    /cannot start: transparent = true \(listener tproxy\) needs CAP_NET_ADMIN .*switching to user = "nobody" after binding drops it/,
  );
});

test('`ironsocket check` refuses the same configurations, and passes one the process can serve', async () => {
  const without = await check(config(), WITHOUT_NET_ADMIN);
  assert.equal(without.code, 1, without.out);
  assert.match(without.out, /needs CAP_NET_ADMIN .* lacks it/);
  const dropping = await check(config('user = "nobody"\n\n'));
  assert.equal(dropping.code, 1, dropping.out);
  assert.match(dropping.out, /switching to user = "nobody" after binding drops it/);
  const fine = await check(config());
  assert.equal(fine.code, 0, fine.out);
  assert.match(fine.out, /config OK/);
});

test('a reload that turns on transparent mode in a proxy without CAP_NET_ADMIN is refused, and the old configuration keeps running', async () => {
  const plain = config().replace('transparent = true\n', '');
  const proxy = await startProxyProcess({ backendPort: backend.port, noListenFlags: true, config: plain, wrap: WITHOUT_NET_ADMIN });
  try {
    fs.writeFileSync(path.join(proxy.dir, 'ironsocket.toml'), config());
    const refused = await run(process.execPath, [CLI, 'reload', '--admin-socket', proxy.adminSocket]).then(
      () => assert.fail('the reload was accepted'),
      (e: { code: number; stdout: string }) => e,
    );
    assert.equal(refused.code, 1);
    const outcome = JSON.parse(refused.stdout) as { ok: boolean; error?: string };
    assert.equal(outcome.ok, false);
    assert.match(outcome.error ?? '', /needs CAP_NET_ADMIN .* lacks it/);
    assert.equal((await proxy.status()).pid, proxy.pid);
  } finally {
    await proxy.stop();
  }
});
