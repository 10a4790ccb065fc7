// The package as an operator gets it: `npm pack`, `npm install -g` into a prefix, the `ironsocket` command, and an upgrade by reinstalling.
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { dirname, join, posix, relative } from 'node:path';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { ROOT, eventually, makeCert, tempDir } from '../testkit/proxy-process.js';

const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
/** The same node runs npm, the `#!/usr/bin/env node` of the installed command, and this test. */
const PATH = `${dirname(process.execPath)}:${process.env.PATH ?? ''}`;
const NPM_FLAGS = ['--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'];

function run(cmd: string, args: string[], cwd = ROOT): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd, env: { ...process.env, PATH }, timeout: 300_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

async function ok(cmd: string, args: string[], cwd = ROOT): Promise<string> {
  const r = await run(cmd, args, cwd);
  assert.equal(r.code, 0, `${cmd} ${args.join(' ')}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** `npm pack` of `from` into `dest` without running the build (the suite runs on the built tree): the tarball's path and its file list. */
async function pack(from: string, dest: string): Promise<{ tarball: string; files: string[] }> {
  const out = await ok('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dest], from);
  const [info] = JSON.parse(out) as Array<{ filename: string; files: Array<{ path: string }> }>;
  return { tarball: join(dest, info!.filename), files: info!.files.map((f) => f.path) };
}

/** The relative imports of one shipped module, from its static `import … from` and `import(…)` forms. */
function relativeImports(source: string): string[] {
  return [...source.matchAll(/(?:from\s+|import\s*\(\s*)['"](\.{1,2}\/[^'"]+)['"]/g)].map((m) => m[1]!);
}

describe('the npm package', () => {
  let dir: string;
  let packed: { tarball: string; files: string[] };
  let prefix: string;
  let bin: string;

  before(async () => {
    dir = tempDir('package');
    packed = await pack(ROOT, dir);
    prefix = join(dir, 'prefix');
    await ok('npm', ['install', '--global', '--prefix', prefix, ...NPM_FLAGS, packed.tarball]);
    bin = join(prefix, 'bin', 'ironsocket');
  });

  it('ships the built code, LICENSE, README and contrib, and nothing from tests or the test kit', () => {
    const files = packed.files;
    for (const f of ['LICENSE', 'README.md', 'package.json', 'dist/cli/main.js', 'contrib/ironsocket.service', 'contrib/ironsocket.socket']) {
      assert.ok(files.includes(f), `${f} in the package`);
    }
    for (const f of ['contrib/sysusers.d/ironsocket.conf', 'contrib/tmpfiles.d/ironsocket.conf', 'contrib/ironsocket.toml']) {
      assert.ok(files.includes(f), `${f} in the package`);
    }
    const unwanted = files.filter((f) => /\.test\.|\.scenarios\.|\.ktls-test\.|\.map$|^dist\/(testkit|scenarios)\/|^src\/|^scripts\//.test(f));
    assert.deepEqual(unwanted, []);
  });

  it('every relative import of a shipped module is shipped too', () => {
    const shipped = new Set(packed.files);
    const missing: string[] = [];
    for (const f of packed.files.filter((p) => p.endsWith('.js'))) {
      for (const spec of relativeImports(readFileSync(join(ROOT, f), 'utf8'))) {
        const target = posix.normalize(posix.join(posix.dirname(f), spec));
        if (!shipped.has(target)) missing.push(`${f} → ${spec}`);
      }
    }
    assert.deepEqual(missing, []);
  });

  it('installed globally, gives an ironsocket command that prints its version and help', async () => {
    assert.equal((await ok(bin, ['--version'])).trim(), `ironsocket ${VERSION}`);
    const help = await ok(bin, ['help']);
    assert.match(help, /ironsocket run/);
    assert.match(help, /check +validate a config file/);
  });

  it('the installed command checks the example config from contrib once its paths point at a certificate', async () => {
    const etc = join(dir, 'etc');
    mkdirSync(etc);
    const cert = await makeCert(etc, 'ec');
    const installed = join(prefix, 'lib', 'node_modules', 'ironsocket');
    const example = readFileSync(join(installed, 'contrib', 'ironsocket.toml'), 'utf8')
      .replace('/etc/ironsocket/fullchain.pem', cert.certFile)
      .replace('/etc/ironsocket/privkey.pem', cert.keyFile);
    assert.notEqual(example, readFileSync(join(installed, 'contrib', 'ironsocket.toml'), 'utf8'), 'the example names its cert and key');
    const file = join(etc, 'ironsocket.toml');
    writeFileSync(file, example);
    const r = await run(bin, ['check', '--config', file]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^config OK\n/);
  });

  it('a newer version installed over the running one takes over its connections on `ironsocket upgrade`', async () => {
    // The next version: the same package with another version number, packed and installed over the first.
    const next = join(dir, 'next');
    const nextVersion = `${VERSION}-next`;
    const installed = join(prefix, 'lib', 'node_modules', 'ironsocket');
    cpSync(installed, next, { recursive: true, filter: (from) => !relative(installed, from).startsWith('node_modules') });
    const pkgFile = join(next, 'package.json');
    const pkg = JSON.parse(readFileSync(pkgFile, 'utf8')) as { version: string };
    writeFileSync(pkgFile, JSON.stringify({ ...pkg, version: nextVersion }, null, 2));
    mkdirSync(join(dir, 'next-pack'));
    const nextPack = await pack(next, join(dir, 'next-pack'));

    const backend = net.createServer((s) => s.pipe(s)).listen(0, '127.0.0.1');
    await new Promise((r) => backend.once('listening', r));
    const cert = await makeCert(dir, 'ec');
    const admin = join(dir, 'admin.sock');
    const proxy: ChildProcess = spawn(
      bin,
      [
        'run',
        '--listen',
        '127.0.0.1:0',
        '--backend',
        `127.0.0.1:${(backend.address() as net.AddressInfo).port}`,
        '--cert',
        cert.certFile,
        '--key',
        cert.keyFile,
        '--admin-socket',
        admin,
      ],
      { env: { ...process.env, PATH, IRONSOCKET_STATE_DIR: join(dir, 'state') }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let log = '';
    proxy.stdout!.setEncoding('utf8').on('data', (d: string) => (log += d));
    proxy.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
    try {
      await eventually(() => /"msg":"listening/.test(log), 30_000, 'the installed proxy listening');
      const status = async () =>
        JSON.parse(await ok(bin, ['status', '--json', '--admin-socket', admin])) as { version: string; listeners: Array<{ address: string }> };
      const before = await status();
      assert.equal(before.version, VERSION);
      const port = Number(before.listeners[0]!.address.split(':').pop());

      const client = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false });
      await new Promise((r, j) => client.once('secureConnect', r).once('error', j));
      const echo = async (text: string) => {
        client.write(text);
        const got = await new Promise<string>((r) => client.once('data', (d: Buffer) => r(d.toString())));
        assert.equal(got, text);
      };
      await echo('before');

      await ok('npm', ['install', '--global', '--prefix', prefix, ...NPM_FLAGS, nextPack.tarball]);
      assert.equal((await ok(bin, ['--version'])).trim(), `ironsocket ${nextVersion}`);
      const up = JSON.parse(await ok(bin, ['upgrade', '--admin-socket', admin])) as { ok: boolean; pid: number; moved: number };
      assert.equal(up.ok, true);
      assert.equal(up.pid, proxy.pid, 'the same process');
      assert.equal(up.moved, 1);
      assert.equal((await status()).version, nextVersion, 'the running proxy is the version now installed');
      await echo('after');
      client.destroy();
    } finally {
      proxy.kill('SIGTERM');
      await new Promise((r) => (proxy.exitCode === null ? proxy.once('exit', r) : r(null)));
      backend.close();
    }
  });

  after(() => rmSync(dir, { recursive: true, force: true }));
});
