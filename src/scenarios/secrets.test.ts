// Proves secrets stay secret on a running proxy: none in logs, status, metrics, environ, argv or files (before and after an upgrade); key logging only when switched on; loose key files warned about.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { KeylogCollector } from '../handshake/keylog.js';
import { deriveDirectionKeys } from '../record/keys.js';
import { suiteByName } from '../record/suites.js';
import { echoBackend, type Backend } from '../testkit/backends.js';
import { CLI, eventually, makeCert, startProxyProcess, tempDir, type RunningProxy } from '../testkit/proxy-process.js';
import { echo } from '../testkit/tls-echo.js';

const run = promisify(execFile);

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

function get(port: number, at: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: at }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => (body += d));
        res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}: ${body}`))));
      })
      .on('error', reject);
  });
}

/** A TLS client through the proxy, with the key log lines node gave it (copies: the collector zeroes what it parses). */
interface Client {
  socket: tls.TLSSocket;
  lines: Buffer[];
}

async function connect(port: number, version: 'TLSv1.2' | 'TLSv1.3'): Promise<Client> {
  const lines: Buffer[] = [];
  const socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const c = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, minVersion: version, maxVersion: version });
    c.on('keylog', (l: Buffer) => lines.push(Buffer.from(l)));
    c.once('secureConnect', () => resolve(c));
    c.once('error', reject);
  });
  await echoed(socket, `hello over ${version}`);
  return { socket, lines };
}

/** Sends `text` and waits until the echo backend has sent it all back, byte-exact. */
async function echoed(s: tls.TLSSocket, text: string): Promise<void> {
  assert.equal(await echo(s, text), text);
}

/** The secret part (last field) of each key log line, decoded. */
function secretsOf(lines: Buffer[]): Buffer[] {
  return lines.map((l) => Buffer.from(l.toString('latin1').trim().split(' ')[2]!, 'hex'));
}

/** A secret in every form it could leak in: raw bytes, hex (both cases), base64, base64url. */
function forms(name: string, secret: Buffer): { name: string; bytes: Buffer }[] {
  return [
    { name: `${name} (raw)`, bytes: secret },
    { name: `${name} (hex)`, bytes: Buffer.from(secret.toString('hex')) },
    { name: `${name} (HEX)`, bytes: Buffer.from(secret.toString('hex').toUpperCase()) },
    { name: `${name} (base64)`, bytes: Buffer.from(secret.toString('base64').replace(/=+$/, '')) },
    { name: `${name} (base64url)`, bytes: Buffer.from(secret.toString('base64url')) },
  ];
}

/** Every regular file under `dir` (recursively; sockets and the like are skipped). */
function filesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .map((f) => path.join(dir, f))
    .filter((f) => fs.lstatSync(f).isFile());
}

describe('secrets on a running proxy (--ktls off: user-mode record keys exist and move in the upgrade)', () => {
  let backend: Backend;
  let proxy: RunningProxy;
  let certDir: string;
  let metricsPort: number;
  let keyFile: string;
  const clients: Client[] = [];
  /** Temporary and shared-memory entries that existed before the proxy started. */
  let existing: Set<string>;
  const scratch = [os.tmpdir(), '/dev/shm'];
  const listing = () => new Set(scratch.flatMap((d) => fs.readdirSync(d).map((f) => path.join(d, f))));

  before(async () => {
    backend = await echoBackend();
    certDir = tempDir('secrets-pki');
    const pair = await makeCert(certDir, 'ec');
    keyFile = pair.keyFile;
    fs.chmodSync(keyFile, 0o600);
    metricsPort = await freePort();
    existing = listing();
    proxy = await startProxyProcess({
      backendPort: backend.port,
      cert: pair,
      args: ['--ktls', 'off', '--log-level', 'debug'],
      config: `[metrics]\nlisten = "127.0.0.1:${metricsPort}"\n`,
      env: { IRONSOCKET_KEYLOG_FILE: undefined },
    });
    clients.push(await connect(proxy.port, 'TLSv1.3'), await connect(proxy.port, 'TLSv1.3'), await connect(proxy.port, 'TLSv1.2'));
  });

  after(async () => {
    for (const c of clients) c.socket.destroy();
    await proxy?.stop();
    await backend?.close();
    fs.rmSync(certDir, { recursive: true, force: true });
  });

  /** Every secret we know, in every form: the sessions' traffic secrets and derived keys, and the private key. */
  function needles(): { name: string; bytes: Buffer }[] {
    const out: { name: string; bytes: Buffer }[] = [];
    for (const [i, c] of clients.entries()) {
      for (const [j, s] of secretsOf(c.lines).entries()) out.push(...forms(`client ${i} key log secret ${j}`, s));
      const version = c.socket.getProtocol();
      if (version === 'TLSv1.3') {
        const keylog = new KeylogCollector();
        for (const l of c.lines) keylog.add(Buffer.from(l));
        const suite = suiteByName(c.socket.getCipher().name, 'TLSv1.3')!;
        const keys = deriveDirectionKeys(suite, {
          version: 'TLSv1.3',
          clientTrafficSecret: keylog.clientTrafficSecret0!,
          serverTrafficSecret: keylog.serverTrafficSecret0!,
        });
        for (const [k, b] of Object.entries({ txKey: keys.tx.key, txIv: keys.tx.iv, rxKey: keys.rx.key, rxIv: keys.rx.iv })) {
          out.push(...forms(`client ${i} ${k}`, Buffer.from(b)));
        }
        keylog.wipe();
      }
    }
    const pem = fs.readFileSync(keyFile, 'latin1');
    const body = pem
      .split('\n')
      .filter((l) => l && !l.startsWith('-----'))
      .map((l) => l.trim());
    for (const [i, line] of body.entries()) out.push({ name: `private key PEM line ${i}`, bytes: Buffer.from(line) });
    out.push(...forms('private key DER', Buffer.from(body.join(''), 'base64')));
    const d = crypto.createPrivateKey(pem).export({ format: 'jwk' }).d!;
    out.push(...forms('private scalar', Buffer.from(d, 'base64url')));
    return out;
  }

  /** Everything an outsider to the process could read: logs, stderr, status, metrics, environ, argv, files. */
  async function haystacks(): Promise<{ where: string; content: Buffer }[]> {
    const out: { where: string; content: Buffer }[] = [];
    out.push({ where: 'the log (stdout)', content: Buffer.from(proxy.logs().join('\n')) });
    out.push({ where: 'stderr', content: Buffer.from(proxy.stderr()) });
    const { stdout } = await run(process.execPath, [CLI, 'status', '--json', '--admin-socket', proxy.adminSocket]);
    out.push({ where: 'status --json', content: Buffer.from(stdout) });
    const { stdout: plain } = await run(process.execPath, [CLI, 'status', '--admin-socket', proxy.adminSocket]);
    out.push({ where: 'status', content: Buffer.from(plain) });
    out.push({ where: '/metrics', content: Buffer.from(await get(metricsPort, '/metrics')) });
    for (const f of ['environ', 'cmdline']) out.push({ where: `/proc/${proxy.pid}/${f}`, content: fs.readFileSync(`/proc/${proxy.pid}/${f}`) });
    // The proxy's own directory (admin socket, config, state dir) and whatever appeared in /tmp or /dev/shm since it started.
    const fresh = [...listing()].filter((f) => !existing.has(f) && f !== certDir);
    for (const root of [proxy.dir, ...fresh]) {
      if (!fs.existsSync(root)) continue; // gone meanwhile
      const files = fs.lstatSync(root).isDirectory() ? filesUnder(root) : fs.lstatSync(root).isFile() ? [root] : [];
      for (const f of files) {
        try {
          out.push({ where: f, content: fs.readFileSync(f) });
        } catch (e) {
          // Another user's file in /tmp: the proxy could not have written it either.
          if ((e as NodeJS.ErrnoException).code !== 'EACCES') throw e;
        }
      }
    }
    return out;
  }

  async function assertNoSecretAnywhere(when: string): Promise<void> {
    const secrets = needles();
    assert.ok(secrets.length > 60, `enough secrets to look for (${secrets.length})`);
    const places = await haystacks();
    assert.ok(
      places.some((p) => p.where.endsWith('ironsocket.toml')),
      'the proxy directory was searched',
    );
    for (const p of places) {
      for (const s of secrets) assert.equal(p.content.indexOf(s.bytes), -1, `${when}: ${p.where} contains ${s.name}`);
    }
  }

  it('no session secret or private key appears in logs, status, metrics, environ, argv or any file the proxy wrote', async () => {
    assert.equal((await proxy.status()).connections.filter((c) => c.mode === 'user').length, 3, 'three user-mode connections');
    await assertNoSecretAnywhere('before the upgrade');
  });

  it('after an in-place upgrade that carried the user-mode keys, still no secret anywhere and no hand-off variable in environ', async () => {
    const { stdout } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket]);
    const outcome = JSON.parse(stdout) as { ok: boolean; pid: number; moved: number };
    assert.equal(outcome.ok, true);
    assert.equal(outcome.pid, proxy.pid, 'same PID');
    assert.equal(outcome.moved, 3, 'the three connections moved');
    for (const c of clients) await echoed(c.socket, 'after the upgrade');
    const environ = fs.readFileSync(`/proc/${proxy.pid}/environ`, 'latin1').split('\0');
    assert.ok(!environ.some((v) => v.startsWith('IRONSOCKET_HANDOFF_FD=')), 'IRONSOCKET_HANDOFF_FD was removed');
    assert.ok(!environ.some((v) => v.startsWith('IRONSOCKET_KEYLOG_FILE=')), 'no key log switch');
    await assertNoSecretAnywhere('after the upgrade');
  });
});

describe('key logging (IRONSOCKET_KEYLOG_FILE, a debugging switch)', () => {
  it('with the variable set, each session’s key log lines are appended to a 0600 file, identical to the client’s, and the proxy says so loudly, again after an upgrade', async () => {
    const backend = await echoBackend();
    const dir = tempDir('keylog');
    const file = path.join(dir, 'keys.log');
    const proxy = await startProxyProcess({ backendPort: backend.port, args: ['--ktls', 'off'], env: { IRONSOCKET_KEYLOG_FILE: file } });
    const clients: Client[] = [];
    try {
      const warnings = () => proxy.logs().filter((l) => l.includes('IRONSOCKET_KEYLOG_FILE is set') && l.includes(file));
      assert.equal(warnings().length, 1, 'one loud log line');
      assert.ok((JSON.parse(warnings()[0]!) as { level: number }).level >= 40, 'logged at warn or above');
      await eventually(() => proxy.stderr().includes('config'), 10_000, 'the start-up banner');
      assert.match(proxy.stderr(), /KEY LOGGING\s+ON: IRONSOCKET_KEYLOG_FILE is set: .*can decrypt every connection/);
      assert.equal(fs.statSync(file).mode & 0o777, 0o600, 'created with mode 0600');

      clients.push(await connect(proxy.port, 'TLSv1.3'));
      const { stdout } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket]);
      assert.equal((JSON.parse(stdout) as { ok: boolean }).ok, true);
      await eventually(() => warnings().length === 2, 10_000, 'the warning again from the new image');
      clients.push(await connect(proxy.port, 'TLSv1.3'));

      const logged = fs.readFileSync(file, 'latin1').split('\n').filter(Boolean).sort();
      const expected = clients.flatMap((c) => c.lines.map((l) => l.toString('latin1').trim())).sort();
      assert.ok(
        expected.some((l) => l.startsWith('CLIENT_TRAFFIC_SECRET_0 ')),
        'the client logged its traffic secret',
      );
      assert.deepEqual(logged, expected, 'the proxy logged exactly the lines the clients did');
    } finally {
      for (const c of clients) c.socket.destroy();
      await proxy.stop();
      await backend.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('without the variable, no key log file is written and nothing about key logging is said', async () => {
    const backend = await echoBackend();
    const proxy = await startProxyProcess({ backendPort: backend.port, args: ['--ktls', 'off'], env: { IRONSOCKET_KEYLOG_FILE: undefined } });
    const clients: Client[] = [];
    try {
      clients.push(await connect(proxy.port, 'TLSv1.3'));
      const line = clients[0]!.lines.find((l) => l.toString('latin1').startsWith('CLIENT_TRAFFIC_SECRET_0 '))!;
      const secretHex = line.toString('latin1').trim().split(' ')[2]!;
      assert.ok(!proxy.logs().some((l) => l.includes('IRONSOCKET_KEYLOG_FILE')));
      await eventually(() => proxy.stderr().includes('config'), 10_000, 'the start-up banner');
      assert.doesNotMatch(proxy.stderr(), /KEY LOGGING/);
      // No file the proxy can open holds the line: look at every regular file it has open and in its directory.
      const open = fs
        .readdirSync(`/proc/${proxy.pid}/fd`)
        .map((fd) => {
          try {
            return fs.readlinkSync(`/proc/${proxy.pid}/fd/${fd}`);
          } catch {
            return '';
          }
        })
        .filter((l) => l.startsWith('/') && fs.existsSync(l) && fs.statSync(l).isFile());
      for (const f of [...open, ...filesUnder(proxy.dir)]) assert.ok(!fs.readFileSync(f, 'latin1').includes(secretHex), `${f} holds the traffic secret`);
    } finally {
      for (const c of clients) c.socket.destroy();
      await proxy.stop();
      await backend.close();
    }
  });
});

describe('private key file permissions', () => {
  it('a key file its group or others can read is named once in a warning at start, by check (which still passes) and on reload', async () => {
    const backend = await echoBackend();
    const dir = tempDir('key-mode');
    const pair = await makeCert(dir, 'ec');
    fs.chmodSync(pair.keyFile, 0o640);
    // Two listeners share the one key file: one warning.
    const config = [1, 2]
      .map(
        (n) =>
          `[[listener]]\nname = "l${n}"\nlisten = "127.0.0.1:0"\nbackend = "127.0.0.1:${backend.port}"\ncert = "${pair.certFile}"\nkey = "${pair.keyFile}"\n`,
      )
      .join('\n');
    const configFile = path.join(dir, 'ironsocket.toml');
    fs.writeFileSync(configFile, config);
    const proxy = await startProxyProcess({ backendPort: backend.port, config, noListenFlags: true });
    try {
      const warned = () => proxy.logs().filter((l) => l.includes(`private key ${pair.keyFile} has mode`));
      assert.equal(warned().length, 1, 'warned once for the file both listeners use');
      const w = JSON.parse(warned()[0]!) as { level: number; file: string; msg: string };
      assert.equal(w.level, 40);
      assert.equal(w.file, pair.keyFile);
      assert.match(w.msg, /mode 0640: its group or other users can read it; run chmod 600 /);

      // (Without the lines about limits and the idle timeout, which main.test.ts checks.)
      const checkOutput = async () =>
        (await run(process.execPath, [CLI, 'check', '--config', configFile])).stdout.replace(/^(limits|idle timeout): .*\n/gm, '');
      assert.equal(await checkOutput(), `config OK\nwarning: ${w.msg}\n`);

      fs.chmodSync(pair.keyFile, 0o604);
      await run(process.execPath, [CLI, 'reload', '--admin-socket', proxy.adminSocket]);
      await eventually(() => proxy.logs().some((l) => l.includes(`${pair.keyFile} has mode 0604`)), 10_000, 'the warning on reload');

      fs.chmodSync(pair.keyFile, 0o600);
      assert.equal(await checkOutput(), 'config OK\n');
    } finally {
      await proxy.stop();
      await backend.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
