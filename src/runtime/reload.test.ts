// Proves hot reload (SIGHUP, `ironsocket reload`): new certificates and listeners for new connections, live ones untouched, bad files refused.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { issue, type Pair } from '../testkit/pki.js';
import { CLI, eventually, startProxyProcess, tempDir, type RunningProxy } from '../testkit/proxy-process.js';
import { taggedEcho, type TestServer } from '../testkit/tagged-backends.js';
import { echo } from '../testkit/tls-echo.js';

const run = promisify(execFile);

/** Connects, reads the backend's one-byte tag, and returns the socket with the served certificate's fingerprint. */
function open(port: number): Promise<{ socket: tls.TLSSocket; fingerprint: string; tag: string }> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, servername: 'site.test' });
    socket.once('error', reject);
    socket.once('data', (d: Buffer) => resolve({ socket, fingerprint: socket.getPeerX509Certificate()!.fingerprint256, tag: d.toString() }));
  });
}

const fingerprintOf = (p: Pair) => new crypto.X509Certificate(fs.readFileSync(p.certFile)).fingerprint256;

describe('hot reload', () => {
  let dir: string;
  let first: Pair;
  let second: Pair;
  let a: TestServer;
  let b: TestServer;
  let proxy: RunningProxy;
  let configFile: string;
  const certFile = () => path.join(dir, 'site.pem');
  const keyFile = () => path.join(dir, 'site-key.pem');
  const install = (p: Pair) => {
    fs.copyFileSync(p.certFile, certFile());
    fs.copyFileSync(p.keyFile, keyFile());
  };
  const config = (listeners: string) => `workers = 1\n${listeners}`;
  const listener = (backendPort: number) =>
    `[[listener]]\nlisten = "127.0.0.1:0"\nbackend = "127.0.0.1:${backendPort}"\ncert = "site.pem"\nkey = "site-key.pem"\n`;

  before(async () => {
    dir = tempDir('reload');
    first = await issue(dir, { cn: 'site.test', dns: ['site.test'] });
    second = await issue(dir, { cn: 'site.test', dns: ['site.test'], kind: 'rsa' });
    install(first);
    [a, b] = await Promise.all([taggedEcho('A'), taggedEcho('B')]);
    configFile = path.join(dir, 'ironsocket.toml');
    fs.writeFileSync(configFile, config(listener(a.port)));
    proxy = await startProxyProcess({ backendPort: 0, noListenFlags: true, args: ['--ktls', 'off', '--config', configFile] });
  });
  after(async () => {
    await proxy.stop();
    await Promise.all([a.close(), b.close()]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('on SIGHUP serves the new certificate to new connections while old connections keep flowing', async () => {
    const old = await open(proxy.port);
    assert.equal(old.fingerprint, fingerprintOf(first));
    install(second);
    process.kill(proxy.pid, 'SIGHUP');
    await proxy.waitForLog(/"msg":"reloaded: new connections use the new configuration"/);
    const fresh = await open(proxy.port);
    assert.equal(fresh.fingerprint, fingerprintOf(second));
    assert.equal(await echo(old.socket, 'still here'), 'still here');
    assert.equal(await echo(fresh.socket, 'new one'), 'new one');
    const s = await proxy.status();
    assert.equal(s.lastReload?.ok, true);
    assert.equal(s.counters.reloads, 1);
    old.socket.destroy();
    fresh.socket.destroy();
  });

  it('refuses a broken certificate file with a log line and the reason, and changes nothing', async () => {
    const live = await open(proxy.port);
    fs.writeFileSync(certFile(), '-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n');
    const r = await run(process.execPath, [CLI, 'reload', '--admin-socket', proxy.adminSocket]).then(
      () => assert.fail('reload should exit 1'),
      (e: { code: number; stdout: string; stderr: string }) => e,
    );
    assert.equal(r.code, 1);
    const outcome = JSON.parse(r.stdout) as { ok: boolean; error: string };
    assert.equal(outcome.ok, false);
    assert.match(outcome.error, /site\.pem/);
    assert.match(r.stderr, /reload refused: .*site\.pem.*the running configuration is unchanged/);
    await proxy.waitForLog(/reload refused, the running configuration is unchanged/);
    const fresh = await open(proxy.port);
    assert.equal(fresh.fingerprint, fingerprintOf(second), 'still the certificate of the last good reload');
    assert.equal(await echo(live.socket, 'untouched'), 'untouched');
    assert.equal((await proxy.status()).counters.reloads_failed, 1);
    install(second);
    live.socket.destroy();
    fresh.socket.destroy();
  });

  it('adds and removes listeners and switches backends, leaving live connections where they are', async () => {
    const live = await open(proxy.port);
    assert.equal(live.tag, 'A');
    fs.writeFileSync(configFile, config(listener(b.port) + listener(a.port)));
    const r = await run(process.execPath, [CLI, 'reload', '--admin-socket', proxy.adminSocket]);
    assert.equal((JSON.parse(r.stdout) as { ok: boolean }).ok, true);
    const listeners = (await proxy.status()).listeners;
    assert.equal(listeners.length, 2);
    assert.equal(listeners[0]!.address, `127.0.0.1:${proxy.port}`, 'the first listener kept its socket');
    const added = Number(listeners[1]!.address.split(':')[1]);
    const toB = await open(proxy.port);
    const onAdded = await open(added);
    assert.equal(toB.tag, 'B', 'new connections on the first listener go to the new backend');
    assert.equal(onAdded.tag, 'A');
    toB.socket.destroy();
    onAdded.socket.destroy();
    assert.equal(await echo(live.socket, 'same backend'), 'same backend');

    fs.writeFileSync(configFile, config(listener(b.port)));
    await run(process.execPath, [CLI, 'reload', '--admin-socket', proxy.adminSocket]);
    await eventually(
      () =>
        new Promise<boolean>((resolve) => {
          const s = net.connect(added, '127.0.0.1');
          s.once('connect', () => (s.destroy(), resolve(false)));
          s.once('error', () => resolve(true));
        }),
      10_000,
      'the removed listener to stop accepting',
    );
    assert.equal(await echo(live.socket, 'and still'), 'and still');
    live.socket.destroy();
  });
});
