// Runs the built `ironsocket` binary: usage errors, status against a fake admin server, check, help, version.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { startAdminServer, type AdminServer } from '../admin/server.js';
import { ensureDefaultCertificate } from '../config/default-cert.js';
import type { StatusSnapshot } from '../core/types.js';
import { ROOT } from '../testkit/proxy-process.js';

const MAIN = fileURLToPath(new URL('./main.js', import.meta.url));
let dir: string;
let env: NodeJS.ProcessEnv;

const SNAPSHOT: StatusSnapshot = {
  pid: 777,
  version: '0.1.0',
  startedAt: new Date(Date.now() - 90_000).toISOString(),
  ktls: { available: true, ciphers: { 'TLSv1.2': [], 'TLSv1.3': ['TLS_AES_256_GCM_SHA384'] }, rekey: true, policy: 'auto' },
  listeners: [{ address: '127.0.0.1:8443', backend: '127.0.0.1:8080' }],
  connections: [
    {
      id: 'k1',
      client: '127.0.0.1:51000',
      backend: '127.0.0.1:8080',
      version: 'TLSv1.3',
      cipher: 'TLS_AES_256_GCM_SHA384',
      mode: 'kernel',
      bytesIn: 4096,
      bytesOut: 10,
      ageMs: 61_000,
    },
  ],
  counters: {},
};

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ironsocket-cli-'));
  env = { ...process.env, IRONSOCKET_STATE_DIR: join(dir, 'state'), XDG_RUNTIME_DIR: join(dir, 'run') };
});
after(() => rm(dir, { recursive: true, force: true }));

function cli(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    // A bound: a `run` that starts when the test expects a refusal must not hang the suite.
    const child = spawn(process.execPath, [MAIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

async function withFakeProxy<T>(fn: (socket: string) => Promise<T>): Promise<T> {
  const socket = join(dir, 'fake', 'admin.sock');
  const server: AdminServer = await startAdminServer(socket, { status: () => SNAPSHOT });
  try {
    return await fn(socket);
  } finally {
    await server.close();
  }
}

describe('ironsocket command line', () => {
  it('exits 2 with the command usage on stderr for an unknown flag', async () => {
    const r = await cli('run', '--bogus');
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown option --bogus/);
    assert.match(r.stderr, /Usage: ironsocket run/);
    assert.equal(r.stdout, '');
  });

  it('exits 2 for a missing command, an unknown command and a flag without its value', async () => {
    for (const args of [[], ['launch'], ['status', '--admin-socket'], ['status', '--listen', 'x']]) {
      const r = await cli(...args);
      assert.equal(r.code, 2, args.join(' '));
      assert.match(r.stderr, /Usage: ironsocket/);
    }
  });

  it('prints help on stdout and the package version', async () => {
    const help = await cli('--help');
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Usage: ironsocket <command>/);
    const v = await cli('--version');
    assert.equal(v.code, 0);
    assert.match(v.stdout, /^ironsocket \d+\.\d+\.\d+/);
  });

  it('help lists the exit codes and the signals the proxy answers', async () => {
    const help = await cli('help');
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Exit status:\n {2}0 .*\n {2}1 .*\n {2}2 +usage error/);
    for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGUSR2']) assert.match(help.stdout, new RegExp(`${signal}\\b`));
    const bad = await cli('frobnicate');
    assert.equal(bad.code, 2, 'a usage error exits 2, as the help says');
  });

  it('status prints the readable table from the admin socket', async () => {
    const r = await withFakeProxy((socket) => cli('status', '--admin-socket', socket));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^ironsocket 0\.1\.0 {2}pid 777 {2}up 1m3\ds/);
    assert.match(r.stdout, /kTLS: available, policy auto/);
    assert.match(r.stdout, /ID\s+CLIENT\s+BACKEND\s+VERSION\s+CIPHER\s+MODE\s+SNI\/ALPN\s+IN\s+OUT\s+AGE/);
    assert.match(r.stdout, /k1\s+127\.0\.0\.1:51000\s+127\.0\.0\.1:8080\s+TLSv1\.3\s+TLS_AES_256_GCM_SHA384\s+kernel\s+-\s+4\.0 KiB\s+10 B\s+1m01s/);
  });

  it('status --json prints the snapshot as parseable JSON', async () => {
    const r = await withFakeProxy((socket) => cli('status', '--json', '--admin-socket', socket));
    assert.equal(r.code, 0, r.stderr);
    const parsed = JSON.parse(r.stdout) as StatusSnapshot;
    assert.deepEqual(parsed, SNAPSHOT);
    for (const field of ['pid', 'version', 'startedAt', 'ktls', 'listeners', 'connections', 'counters']) assert.ok(field in parsed, field);
  });

  it('status explains when no proxy is running', async () => {
    const socket = join(dir, 'nothing', 'admin.sock');
    const r = await cli('status', '--admin-socket', socket);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`is ironsocket running\\? admin socket: ${socket.replace(/[.]/g, '\\.')}`));
  });

  it('check prints "config OK" for a valid config with a matching cert and key', async () => {
    const pair = await ensureDefaultCertificate({ IRONSOCKET_STATE_DIR: join(dir, 'pair') });
    const file = join(dir, 'good.toml');
    await writeFile(file, `listen = "[::1]:9443"\ncert = ${JSON.stringify(pair.certFile)}\nkey = ${JSON.stringify(pair.keyFile)}\n`);
    const r = await cli('check', '--config', file);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      r.stdout,
      'config OK\n' +
        'limits: 10000 connections; per source (IPv4 address, IPv6 /64): 1000 connections, 256 in handshake\n' +
        'idle timeout: none: idle connections stay open (websockets, databases); set [timeouts] idle to close them\n',
    );
  });

  it('check prints the configured connection limits and idle timeout', async () => {
    const pair = await ensureDefaultCertificate({ IRONSOCKET_STATE_DIR: join(dir, 'pair') });
    const file = join(dir, 'limits.toml');
    await writeFile(
      file,
      `cert = ${JSON.stringify(pair.certFile)}\nkey = ${JSON.stringify(pair.keyFile)}\n` +
        '[timeouts]\nidle = "1h30m"\n[limits]\nmax_connections = 500\nmax_connections_per_source = 0\nmax_handshakes_per_source = 16\n',
    );
    const r = await cli('check', '--config', file);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^limits: 500 connections; per source \(IPv4 address, IPv6 \/64\): no limit on connections, 16 in handshake$/m);
    assert.match(r.stdout, /^idle timeout: 1h30m: a connection with no traffic either way for that long is closed$/m);
  });

  it("check's failure looks exactly as the README shows it", async () => {
    const readme = await readFile(join(ROOT, 'README.md'), 'utf8');
    const shown = /\$ ironsocket check --config (\S+)\n([^`]*)```/.exec(readme);
    assert.ok(shown, 'the README shows a failing check');
    const [, shownPath, shownOutput] = shown;
    const pair = await ensureDefaultCertificate({ IRONSOCKET_STATE_DIR: join(dir, 'readme-pair') });
    const certs = `cert = ${JSON.stringify(pair.certFile)}\nkey = ${JSON.stringify(pair.keyFile)}\n`;
    const file = join(dir, 'readme.toml');
    await writeFile(
      file,
      `[[listener]]\nlisten = "127.0.0.1:9441"\nbackend = "127.0.0.1:8080"\n${certs}` +
        `[[listener]]\nlisten = "127.0.0.1:9442"\nbackend = "127.0.0.1:8080"\nalpn = ["http/1.1"]\n${certs}` +
        `[[listener.route]]\nalpn = "h2"\nbackend = "127.0.0.1:8081"\n`,
    );
    const r = await cli('check', '--config', file);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, shownOutput!.replaceAll(shownPath!, file));
  });

  it('check lists every problem and exits 1', async () => {
    const file = join(dir, 'bad.toml');
    await writeFile(file, 'listen = "foo"\n[limits]\nmax_conns = 5\n');
    const r = await cli('check', '--config', file);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /listen: expected "HOST:PORT", got "foo"/);
    assert.match(r.stderr, /limits\.max_conns: unknown key/);
  });

  it('check reports a cert file that does not exist', async () => {
    const file = join(dir, 'nocert.toml');
    await writeFile(file, 'cert = "missing.pem"\nkey = "missing-key.pem"\n');
    const r = await cli('check', '--config', file);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /cert: cannot read ".*missing\.pem": no such file/);
    assert.match(r.stderr, /key: cannot read ".*missing-key\.pem": no such file/);
  });

  it('check names the listener whose certificate or client CA is wrong in a file with several', async () => {
    const pair = await ensureDefaultCertificate({ IRONSOCKET_STATE_DIR: join(dir, 'pair') });
    const other = await ensureDefaultCertificate({ IRONSOCKET_STATE_DIR: join(dir, 'other') });
    const file = join(dir, 'multi.toml');
    const good = `cert = ${JSON.stringify(pair.certFile)}\nkey = ${JSON.stringify(pair.keyFile)}`;
    await writeFile(
      file,
      `[[listener]]\nname = "web"\nlisten = "127.0.0.1:1"\nbackend = "127.0.0.1:2"\n${good}\n` +
        `[[listener]]\nname = "db"\nlisten = "127.0.0.1:3"\nbackend = "127.0.0.1:4"\ncert = ${JSON.stringify(pair.certFile)}\nkey = ${JSON.stringify(other.keyFile)}\nclient_auth = { ca = "nope.pem" }\n`,
    );
    const r = await cli('check', '--config', file);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /listener "db": cert ".*" and key ".*" do not match/);
    assert.match(r.stderr, /listener "db": client_auth\.ca: cannot read ".*nope\.pem": no such file/);
    assert.doesNotMatch(r.stderr, /listener "web"/);
  });

  it('check refuses a user that does not exist, with the same message run gives', async () => {
    const pair = await ensureDefaultCertificate({ IRONSOCKET_STATE_DIR: join(dir, 'pair') });
    const file = join(dir, 'no-user.toml');
    await writeFile(
      file,
      `listen = "127.0.0.1:0"\ncert = ${JSON.stringify(pair.certFile)}\nkey = ${JSON.stringify(pair.keyFile)}\nuser = "no-such-user-here"\n`,
    );
    const checked = await cli('check', '--config', file);
    const ran = await cli('run', '--config', file, '--ktls', 'off', '--admin-socket', join(dir, 'no-user', 'admin.sock'));
    const after = (r: { stderr: string }, prefix: string) => new RegExp(`^${prefix}(.*)$`, 'm').exec(r.stderr)?.[1];
    assert.equal(ran.code, 1, ran.stderr);
    assert.equal(after(ran, 'ironsocket: cannot start: '), 'user "no-such-user-here" does not exist', ran.stderr);
    assert.equal(checked.code, 1, checked.stdout);
    assert.equal(after(checked, 'ironsocket: check failed: '), after(ran, 'ironsocket: cannot start: '), checked.stderr);
    assert.doesNotMatch(checked.stdout, /config OK/);
  });

  it('run exits 1 with a precise message and no stack trace on a bad flag value', async () => {
    const r = await cli('run', '--listen', 'nowhere');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /--listen: expected "HOST:PORT", got "nowhere"/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  });
});
