// Another user must not be able to squat the admin socket: the server refuses directories others control, the CLI servers run by others.
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, rm, stat, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { echoBackend } from '../testkit/backends.js';
import { startAdminServer } from './server.js';
import { runCli } from '../testkit/proxy-process.js';

const SOCKET_PATH_MODULE = fileURLToPath(new URL('../config/admin-socket-path.js', import.meta.url));
const NOBODY = 65534;
const OTHER = 65533; // a second unprivileged uid, without a passwd entry
const run = promisify(execFile);

let dir: string;
let n = 0;
before(async () => {
  assert.equal(process.getuid?.(), 0, 'these tests need root (CI runs as root) to act as other users');
  dir = await mkdtemp(join(tmpdir(), 'ironsocket-squat-'));
  await chmod(dir, 0o755);
});
after(() => rm(dir, { recursive: true, force: true }));
const fresh = () => join(dir, `case${++n}`);

/** Runs `node args` as `uid`, collecting its output. */
function asUser(uid: number, args: string[], env: NodeJS.ProcessEnv = process.env): ChildProcess & { out: () => string } {
  const child = spawn('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  return Object.assign(child, { out: () => out });
}

/** A fake proxy run by another user: it answers with a spoofed status at once and prints `GOT n` for every byte it receives. */
async function fakeServer(uid: number, socket: string): Promise<ChildProcess & { out: () => string }> {
  const code = `const p=process.argv[1];const s=require('net').createServer((c)=>{c.on('error',()=>{});c.write(JSON.stringify({ok:true,result:{pid:1,spoofed:true}})+'\\n');c.on('data',(d)=>process.stdout.write('GOT '+d.length+'\\n'))});s.listen(p,()=>{require('fs').chmodSync(p,0o666);process.stdout.write('LISTENING\\n')});`;
  const child = asUser(uid, ['-e', code, socket]);
  const deadline = Date.now() + 10_000;
  while (!child.out().includes('LISTENING')) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`fake server did not start: ${child.out()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return child;
}

const cli = runCli;

describe('the CLI talks only to a proxy run by root or by its own user', () => {
  it('refuses a socket served by another user in a directory that user made in /tmp, and sends it nothing (status, reload, upgrade)', async () => {
    // The old default: /tmp/ironsocket-UID, which any user could create first.
    const squatted = await mkdtemp(join(tmpdir(), 'ironsocket-0-'));
    await chown(squatted, NOBODY, NOBODY);
    const socket = join(squatted, 'admin.sock');
    const fake = await fakeServer(NOBODY, socket);
    try {
      for (const cmd of [['status', '--json'], ['reload'], ['upgrade', '--timeout', '5']]) {
        const r = await cli([...cmd, '--admin-socket', socket]);
        assert.equal(r.code, 1, `${cmd[0]}: ${r.stdout}${r.stderr}`);
        assert.match(r.stderr, /refusing to talk to admin socket .* served by uid 65534, neither you \(uid 0\) nor root.*nothing was sent/);
        assert.doesNotMatch(r.stdout, /spoofed/, `${cmd[0]} printed the other user's answer`);
      }
      await new Promise((r) => setTimeout(r, 300));
      assert.doesNotMatch(fake.out(), /GOT/, 'the other user received nothing');
    } finally {
      fake.kill();
      await rm(squatted, { recursive: true, force: true });
    }
  });

  it('an unprivileged user refuses a socket served by another unprivileged user', async () => {
    const where = fresh();
    await mkdir(where, { mode: 0o755 });
    await chown(where, NOBODY, NOBODY);
    const socket = join(where, 'admin.sock');
    const fake = await fakeServer(NOBODY, socket);
    try {
      const r = await cli(['status', '--json', '--admin-socket', socket], { uid: OTHER });
      assert.equal(r.code, 1, r.stdout + r.stderr);
      assert.match(r.stderr, /served by uid 65534, neither you \(uid 65533\) nor root/);
      assert.equal(r.stdout, '');
      await new Promise((r) => setTimeout(r, 300));
      assert.doesNotMatch(fake.out(), /GOT/);
    } finally {
      fake.kill();
    }
  });

  it('root still talks to a proxy that dropped root, in the directory root created and handed over (only root can write its parent)', async () => {
    const parent = fresh();
    await mkdir(parent, { mode: 0o755 });
    const handed = join(parent, 'ironsocket');
    await mkdir(handed, { mode: 0o700 });
    await chown(handed, NOBODY, NOBODY);
    const socket = join(handed, 'admin.sock');
    const fake = await fakeServer(NOBODY, socket);
    try {
      const r = await cli(['status', '--json', '--admin-socket', socket]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout), { pid: 1, spoofed: true });
    } finally {
      fake.kill();
    }
  });
});

describe('the admin server refuses a directory another user could control', () => {
  const handlers = { status: () => ({}) as never };

  it('refuses a symbolic link in place of the directory, even to a private directory', async () => {
    const base = fresh();
    await mkdir(join(base, 'real'), { recursive: true, mode: 0o700 });
    await symlink(join(base, 'real'), join(base, 'link'));
    await assert.rejects(startAdminServer(join(base, 'link', 'admin.sock'), handlers), /admin socket directory .*link is a symbolic link; refusing to use it/);
  });

  it('refuses a sticky world-writable directory (a /tmp-like one) and a group-writable one', async () => {
    for (const mode of [0o1777, 0o770]) {
      const d = fresh();
      await mkdir(d);
      await chmod(d, mode);
      await assert.rejects(startAdminServer(join(d, 'admin.sock'), handlers), new RegExp(`is writable by other users \\(mode ${mode.toString(8)}`));
    }
  });

  it('refuses a directory in a world-writable parent without the sticky bit', async () => {
    const parent = fresh();
    await mkdir(parent);
    await chmod(parent, 0o777);
    await assert.rejects(
      startAdminServer(join(parent, 'ironsocket', 'admin.sock'), handlers),
      /which every user can write to without the sticky bit \(mode 777\)/,
    );
  });

  it('`ironsocket run` refuses to start when another user created its default directory first, or its parent is world-writable without the sticky bit', async () => {
    const backend = await echoBackend();
    try {
      const cases: Array<{ prepare: (runtime: string) => Promise<void>; reason: RegExp }> = [
        {
          prepare: async (runtime) => {
            await mkdir(join(runtime, 'ironsocket'), { recursive: true, mode: 0o700 });
            await chown(join(runtime, 'ironsocket'), NOBODY, NOBODY);
          },
          reason: /admin socket directory .*ironsocket is owned by uid 65534, not by you \(uid 0\); another user may have created it first/,
        },
        {
          prepare: async (runtime) => {
            await mkdir(runtime, { recursive: true });
            await chmod(runtime, 0o777);
          },
          reason: /which every user can write to without the sticky bit/,
        },
      ];
      for (const c of cases) {
        const base = fresh();
        const runtime = join(base, 'runtime');
        await c.prepare(runtime);
        const env = { ...process.env, XDG_RUNTIME_DIR: runtime, IRONSOCKET_STATE_DIR: join(base, 'state') };
        const r = await cli(['run', '--listen', '127.0.0.1:0', '--backend', `127.0.0.1:${backend.port}`, '--ktls', 'off'], { env });
        assert.equal(r.code, 1, r.stderr);
        assert.match(r.stderr, /ironsocket: cannot start: /);
        assert.match(r.stderr, c.reason);
      }
    } finally {
      await backend.close();
    }
  });
});

describe('the default admin socket path', () => {
  const defaultFor = async (uid: number, home: string, rootDir?: string) => {
    const code = `import(${JSON.stringify(SOCKET_PATH_MODULE)}).then((m)=>process.stdout.write(m.defaultAdminSocketPath({HOME:${JSON.stringify(home)}}${rootDir ? `,${JSON.stringify(rootDir)}` : ''})))`;
    return (await run('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, '-e', code])).stdout;
  };

  it('is under the user’s own home without XDG_RUNTIME_DIR, never in /tmp where another user could create it first', async () => {
    assert.equal(await defaultFor(NOBODY, '/home/someone'), '/home/someone/.local/state/ironsocket/admin.sock');
  });

  it('is the root-made directory once root handed it to this user (a proxy that dropped root, after its upgrade), but not one this user made elsewhere', async () => {
    const parent = fresh();
    await mkdir(parent, { mode: 0o755 });
    const handed = join(parent, 'ironsocket');
    await mkdir(handed, { mode: 0o700 });
    assert.equal(await defaultFor(NOBODY, '/h', handed), '/h/.local/state/ironsocket/admin.sock', 'still root’s');
    await chown(handed, NOBODY, NOBODY);
    assert.equal(await defaultFor(NOBODY, '/h', handed), join(handed, 'admin.sock'));
    await chmod(parent, 0o777);
    assert.equal(await defaultFor(NOBODY, '/h', handed), '/h/.local/state/ironsocket/admin.sock', 'a parent others can write proves nothing');
    assert.equal((await stat(handed)).uid, NOBODY);
  });
});
