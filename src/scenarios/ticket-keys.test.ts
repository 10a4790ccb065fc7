// Session ticket keys on a running proxy: a key file shared with HAProxy, key files refused, reloads, and scheduled rotation.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { echoBackend, type Backend } from '../testkit/backends.js';
import { eventually, makeCert, runCli, startProxyProcess, tempDir, type RunningProxy } from '../testkit/proxy-process.js';
import { VERSIONS, onWorker, visit, visitProxy, type TlsVersion } from '../testkit/resume.js';

/** Random 48-byte keys and the key file text (HAProxy's tls-ticket-keys: one base64 key per line). */
const newKeys = (n: number) => Array.from({ length: n }, () => crypto.randomBytes(48));
const keyText = (keys: Buffer[]) => keys.map((k) => k.toString('base64')).join('\n') + '\n';
const nameOf = (ticket: Buffer | undefined) => ticket?.subarray(0, 16);

async function freePort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => s.once('listening', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** HAProxy 2.x in TCP mode in front of `backendPort`, its tickets under `keyFile`. */
async function haproxy(dir: string, pem: string, keyFile: string, backendPort: number): Promise<{ port: number; stop(): void }> {
  const port = await freePort();
  const cfg = path.join(dir, 'haproxy.cfg');
  fs.writeFileSync(
    cfg,
    [
      'global',
      '  maxconn 100',
      'defaults',
      '  mode tcp',
      '  timeout connect 5s',
      '  timeout client 30s',
      '  timeout server 30s',
      'frontend tls',
      `  bind 127.0.0.1:${port} ssl crt ${pem} tls-ticket-keys ${keyFile}`,
      '  default_backend echo',
      'backend echo',
      `  server echo 127.0.0.1:${backendPort}`,
      '',
    ].join('\n'),
  );
  const child: ChildProcess = spawn('haproxy', ['-db', '-f', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  await eventually(
    () =>
      new Promise<boolean>((resolve) => {
        const c = net.connect(port, '127.0.0.1', () => (c.destroy(), resolve(true)));
        c.on('error', () => resolve(child.exitCode !== null ? assert.fail(`haproxy exited: ${err}`) : false));
      }),
    20_000,
    'haproxy listening',
  );
  return { port, stop: () => child.kill() };
}

describe('session ticket keys on a running proxy', () => {
  let dir: string;
  let cert: { certFile: string; keyFile: string };
  let echo: Backend;
  before(async () => {
    dir = tempDir('ticket-keys-run');
    cert = await makeCert(dir, 'ec');
    echo = await echoBackend();
  });
  after(async () => {
    await echo.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A proxy with two handshake workers and `[session_tickets]` from `tickets` (TOML lines). */
  function proxyWith(tickets: string): Promise<RunningProxy> {
    return startProxyProcess({ backendPort: echo.port, cert, args: ['--ktls', 'off', '--workers', '2'], config: `[session_tickets]\n${tickets}\n` });
  }

  it('shares a key file with HAProxy: each resumes the other’s tickets on every worker, new tickets are under the penultimate key (TLS 1.3 and 1.2)', async () => {
    const keys = newKeys(4);
    const file = path.join(dir, 'shared.keys');
    fs.writeFileSync(file, keyText(keys), { mode: 0o600 });
    const pem = path.join(dir, 'haproxy.pem');
    fs.writeFileSync(pem, Buffer.concat([fs.readFileSync(cert.certFile), fs.readFileSync(cert.keyFile)]));
    const h = await haproxy(dir, pem, file, echo.port);
    const proxy = await proxyWith(`key_file = "${file}"`);
    try {
      for (const version of VERSIONS) {
        const fromHaproxy = await visit(h.port, version);
        const ours = await visitProxy(proxy, version);
        assert.deepEqual(nameOf(ours.ticket), keys[2]!.subarray(0, 16), `${version}: ours under the penultimate key (of the last 3)`);
        assert.deepEqual(nameOf(fromHaproxy.ticket), nameOf(ours.ticket), `${version}: HAProxy's too`);
        for (const w of [0, 1] as const) {
          const v = await onWorker(proxy, w, () => visitProxy(proxy, version, fromHaproxy.sessions[0]));
          assert.deepEqual([v.logged.handshaker, v.resumed, v.echoed], [w, true, true], `${version}: HAProxy's ticket resumed on worker ${w}`);
        }
        const back = await visit(h.port, version, ours.sessions[0]);
        assert.deepEqual([back.resumed, back.echoed], [true, true], `${version}: HAProxy resumed our ticket`);
      }
    } finally {
      h.stop();
      await proxy.stop();
    }
  });

  it('accepts the last 3 keys of its file and encrypts with the penultimate, so a key appended elsewhere is accepted here first; a reload takes the edited file', async () => {
    const keys = newKeys(5);
    const [a, b] = [path.join(dir, 'a.keys'), path.join(dir, 'b.keys')];
    fs.writeFileSync(a, keyText(keys.slice(0, 3)), { mode: 0o600 }); // k0 k1 k2: k1 encrypts
    fs.writeFileSync(b, keyText(keys.slice(1, 5)), { mode: 0o600 }); // k2 k3 k4: k3 encrypts
    const p = await proxyWith(`key_file = "${a}"`);
    const q = await proxyWith(`key_file = "${b}"`);
    try {
      const fromP: Record<string, Buffer> = {};
      for (const version of VERSIONS) {
        const underK1 = await visitProxy(p, version);
        assert.deepEqual(nameOf(underK1.ticket), keys[1]!.subarray(0, 16));
        fromP[version] = underK1.sessions[0]!;
        const underK3 = await visitProxy(q, version);
        assert.deepEqual(nameOf(underK3.ticket), keys[3]!.subarray(0, 16));
        const v = await visitProxy(p, version, underK3.sessions[0]);
        assert.equal(v.resumed, false, `${version}: k3 is not in p's file`);
      }
      assert.equal((await p.status()).counters.handshakes_ticket_unknown, 2);
      // The operator appends k3 and k4 to p's file and reloads: p now encrypts with k3, accepts k2..k4, no longer k1.
      fs.writeFileSync(a, keyText(keys));
      const r = await runCli(['reload', '--admin-socket', p.adminSocket]);
      assert.equal(r.code, 0, r.stderr);
      for (const version of VERSIONS) {
        const q3 = await visitProxy(q, version);
        for (const w of [0, 1] as const) {
          const v = await onWorker(p, w, () => visitProxy(p, version, q3.sessions[0]));
          assert.deepEqual([v.logged.handshaker, v.resumed], [w, true], `${version}: q's k3 ticket resumes on p's worker ${w} after the reload`);
        }
        assert.equal((await visitProxy(p, version, fromP[version])).resumed, false, `${version}: k1 left p's last three`);
        assert.deepEqual(nameOf((await visitProxy(p, version)).ticket), keys[3]!.subarray(0, 16));
      }
      const status = await p.status();
      assert.deepEqual([status.tickets?.source, status.tickets?.keys, status.tickets?.encrypt], ['key_file', 3, 1]);
      // Nothing of a key anywhere the proxy writes: logs, stderr, status.
      const seen = [...p.logs(), p.stderr(), JSON.stringify(status)].join('\n');
      for (const k of keys) {
        for (const text of [k.toString('base64'), k.toString('hex'), k.subarray(16).toString('hex'), k.subarray(16, 32).toString('base64')]) {
          assert.equal(seen.includes(text.slice(0, 20)), false, 'no key material in logs, stderr or status');
        }
      }
    } finally {
      await Promise.all([p.stop(), q.stop()]);
    }
  });

  it('refuses to start with a bad key file, refuses a reload to one (keeping its keys), and warns about a file others can read', async () => {
    const file = path.join(dir, 'run.keys');
    fs.writeFileSync(file, keyText(newKeys(3).map(() => crypto.randomBytes(80))), { mode: 0o600 });
    const config = path.join(dir, 'bad.toml');
    fs.writeFileSync(config, `[session_tickets]\nkey_file = "${file}"\n`);
    const started = await runCli([
      'run',
      '--config',
      config,
      '--listen',
      '127.0.0.1:0',
      '--cert',
      cert.certFile,
      '--key',
      cert.keyFile,
      '--admin-socket',
      path.join(dir, 'bad.sock'),
    ]);
    assert.equal(started.code, 1);
    assert.match(
      started.stderr,
      /cannot start: session_tickets\.key_file .*run\.keys: line 1: an 80-byte \(AES-256\) key; only 48-byte keys \(AES-128\) can be used/,
    );
    fs.writeFileSync(file, keyText(newKeys(3)));
    fs.chmodSync(file, 0o644);
    const proxy = await proxyWith(`key_file = "${file}"`);
    try {
      assert.ok(
        proxy.logs().some((l) => l.includes(`session ticket key file ${file} has mode 0644`)),
        'the loose mode is logged at start',
      );
      const before = await visitProxy(proxy, 'TLSv1.3');
      for (const [text, why] of [
        [keyText(newKeys(2)), /2 key\(s\); at least 3 are needed/],
        ['not base64\n', /line 1: not a base64 key/],
      ] as const) {
        fs.writeFileSync(file, text);
        const r = await runCli(['reload', '--admin-socket', proxy.adminSocket]);
        assert.equal(r.code, 1);
        assert.match(r.stderr, why);
        assert.match(r.stderr, /reload refused: session_tickets\.key_file/);
        assert.equal((await visitProxy(proxy, 'TLSv1.3', before.sessions[0])).resumed, true, 'the keys in use are kept');
      }
    } finally {
      await proxy.stop();
    }
  });

  it('rotates generated keys on schedule: tickets resume on both workers under the previous key, a reload keeps the keys, and a key two rotations old is dropped', async () => {
    const every = 12_000;
    const proxy = await proxyWith(`rotate_every = "${every / 1000}s"\nlifetime = "${every / 1000}s"`);
    const rotations = () => proxy.logs().filter((l) => l.includes('session ticket keys rotated')).length;
    const waitRotation = (n: number) => eventually(() => rotations() >= n, 3 * every, `rotation ${n}`);
    try {
      // A reload keeps the keys (a ticket of before resumes) and the schedule.
      const early = await visitProxy(proxy, 'TLSv1.3');
      const r = await runCli(['reload', '--admin-socket', proxy.adminSocket]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal((await onWorker(proxy, 1, () => visitProxy(proxy, 'TLSv1.3', early.sessions[0]))).resumed, true, 'kept by the reload');
      // Tickets issued shortly before a rotation, under the key that is current until then...
      await waitRotation(1);
      await new Promise((res) => setTimeout(res, every - 3000));
      const late: Partial<Record<TlsVersion, Buffer>> = {};
      for (const version of VERSIONS) late[version] = (await visitProxy(proxy, version)).sessions[0];
      assert.equal(rotations(), 1, 'issued before the second rotation');
      // ...resume after it on both workers, under what is now the previous key.
      await waitRotation(2);
      for (const version of VERSIONS) {
        for (const w of [1, 0] as const) {
          const v = await onWorker(proxy, w, () => visitProxy(proxy, version, late[version]));
          assert.deepEqual([v.logged.handshaker, v.resumed], [w, true], `${version}: a ticket under the previous key resumes on worker ${w}`);
        }
      }
      // Both workers took the new set: what worker 0 encrypts now, worker 1 decrypts.
      const fresh = await onWorker(proxy, 0, () => visitProxy(proxy, 'TLSv1.3'));
      assert.equal((await onWorker(proxy, 1, () => visitProxy(proxy, 'TLSv1.3', fresh.sessions[0]))).resumed, true, 'worker 1 has the new key');
      assert.equal((await proxy.status()).tickets?.keys, 3);
      const unknown = (await proxy.status()).counters.handshakes_ticket_unknown ?? 0;
      // Two rotations after its key stopped encrypting, the key is gone. A TLS 1.3 client no longer offers a ticket past its
      // lifetime (which ends first, by design); a TLS 1.2 client still does, so the proxy shows why it refuses it.
      await waitRotation(3);
      assert.equal((await visitProxy(proxy, 'TLSv1.2', late['TLSv1.2'])).resumed, false);
      assert.equal((await proxy.status()).counters.handshakes_ticket_unknown, unknown + 1, 'refused because its key was dropped, not only expired');
    } finally {
      await proxy.stop();
    }
  });
});
