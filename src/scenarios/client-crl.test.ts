// Proves client_auth.crl on a running proxy: revoked client certificates get certificate_revoked (TLS 1.2 and 1.3), counted and logged boundedly, and a reload loads a new CRL.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { NOTES_UNLIMITED } from '../relay/budget.js';
import { echoBackend, type Backend } from '../testkit/backends.js';
import { issue, makeCa, makeCrl, type Ca, type Pair } from '../testkit/pki.js';
import { CLI, eventually, startProxyProcess, tempDir, type RunningProxy } from '../testkit/proxy-process.js';
import { echo } from '../testkit/tls-echo.js';
import { alertCode } from '../testkit/alert-code.js';

const run = promisify(execFile);
const REVOKED = 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED';

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (d: string) => (body += d));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

const creds = (p: Pair) => ({ cert: fs.readFileSync(p.certFile), key: fs.readFileSync(p.keyFile) });

/** Connects with `who`'s certificate: 'served' when the echo answers, else the client's error code. */
function attempt(port: number, who: Pair, o: tls.ConnectionOptions = {}): Promise<string> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...creds(who), ...o });
    socket.on('secureConnect', () => socket.write('x'));
    socket.on('data', () => {
      resolve('served');
      socket.destroy();
    });
    socket.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ? alertCode(e.code) : e.message));
    socket.once('close', () => setTimeout(() => resolve('closed without an alert'), 100));
  });
}

function connected(port: number, who: Pair): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...creds(who) }, () => resolve(socket));
    socket.once('error', reject);
  });
}

describe('client certificate revocation (client_auth.crl)', () => {
  let dir: string;
  let ca: Ca;
  let alice: Pair;
  let bob: Pair;
  let carol: Pair;
  let crlPem: string;
  let backend: Backend;
  let proxy: RunningProxy;
  let metricsPort: number;
  const revokedLines = () => proxy.logs().filter((l) => l.includes('"reason":"client_cert_revoked"'));

  before(async () => {
    dir = tempDir('client-crl');
    ca = await makeCa(dir, 'Clients CA');
    const site = await issue(dir, { cn: 'site.test', dns: ['site.test'] });
    [alice, bob, carol] = await Promise.all(['alice', 'bob', 'carol'].map((cn) => issue(dir, { cn, subjectExtra: '/O=Acme', client: true, ca })));
    crlPem = await makeCrl(ca, { revoked: [bob!], out: path.join(dir, 'clients.crl.pem') });
    const crlDer = await makeCrl(ca, { revoked: [bob!], format: 'der', out: path.join(dir, 'clients.crl.der') });
    backend = await echoBackend();
    metricsPort = await freePort();
    const listener = (name: string, clientAuth: string) => `[[listener]]
name = "${name}"
listen = "127.0.0.1:0"
backend = "127.0.0.1:${backend.port}"
cert = ${JSON.stringify(site.certFile)}
key = ${JSON.stringify(site.keyFile)}
client_auth = ${clientAuth}
`;
    proxy = await startProxyProcess({
      backendPort: 0,
      noListenFlags: true,
      args: ['--ktls', 'off'],
      config: `workers = 1
[metrics]
listen = "127.0.0.1:${metricsPort}"
${listener('mtls', `{ ca = ${JSON.stringify(ca.certFile)}, crl = ${JSON.stringify(crlPem)} }`)}
${listener('mtls-optional-der', `{ ca = ${JSON.stringify(ca.certFile)}, verify = "optional", crl = ${JSON.stringify(crlDer)} }`)}`,
    });
  });
  after(async () => {
    await proxy?.stop();
    await backend?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a revoked client certificate with the certificate_revoked alert, in TLS 1.3 and in TLS 1.2', async () => {
    const [mtls] = proxy.ports;
    assert.equal(await attempt(mtls!, bob), REVOKED);
    assert.equal(await attempt(mtls!, bob, { maxVersion: 'TLSv1.2' }), REVOKED);
  });

  it('serves a certificate of the same CA that the CRL does not list, in TLS 1.3 and in TLS 1.2', async () => {
    const [mtls] = proxy.ports;
    assert.equal(await attempt(mtls!, alice), 'served');
    assert.equal(await attempt(mtls!, alice, { maxVersion: 'TLSv1.2' }), 'served');
  });

  it('reads a DER CRL as well, and refuses a revoked certificate where client certificates are optional', async () => {
    const [, optional] = proxy.ports;
    assert.equal(await attempt(optional!, bob), REVOKED, 'a revoked certificate is not the same as none');
    assert.equal(await attempt(optional!, bob, { maxVersion: 'TLSv1.2' }), REVOKED);
    assert.equal(await attempt(optional!, alice), 'served');
    const none = await new Promise<string>((resolve) => {
      const s = tls.connect({ host: '127.0.0.1', port: optional!, rejectUnauthorized: false }, () => s.write('x'));
      s.on('data', () => resolve('served'));
      s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    });
    assert.equal(none, 'served', 'no certificate at all is still fine where they are optional');
  });

  it('counts refusals in status and /metrics and logs each with the certificate subject', async () => {
    const [mtls] = proxy.ports;
    const before = (await proxy.status()).counters.handshake_failed_client_cert_revoked ?? 0;
    assert.equal(await attempt(mtls!, bob), REVOKED);
    const status = await proxy.status();
    assert.equal(status.counters.handshake_failed_client_cert_revoked, before + 1);
    const m = await scrape(metricsPort);
    assert.match(m, new RegExp(`^ironsocket_handshakes_failed_total\\{reason="client_cert_revoked"\\} ${before + 1}$`, 'm'));
    const line = JSON.parse(revokedLines().at(-1)!) as { msg: string; clientSubject: string; listener: string; level: number | string };
    assert.match(line.msg, /client certificate "CN=bob, O=Acme" is revoked/);
    assert.equal(line.clientSubject, 'CN=bob, O=Acme');
    assert.equal(line.listener, 'mtls');
  });

  it('logs a bounded number of lines for a flood of revoked clients, and still counts each', async () => {
    const [mtls] = proxy.ports;
    const counted = (await proxy.status()).counters.handshake_failed_client_cert_revoked ?? 0;
    const logged = revokedLines().length;
    const flood = 60;
    for (let i = 0; i < flood; i += 10) {
      const codes = await Promise.all(Array.from({ length: 10 }, () => attempt(mtls!, bob)));
      assert.deepEqual(new Set(codes), new Set([REVOKED]));
    }
    assert.equal((await proxy.status()).counters.handshake_failed_client_cert_revoked, counted + flood);
    const lines = revokedLines().length - logged;
    assert.ok(lines <= NOTES_UNLIMITED, `${lines} log lines for ${flood} revoked clients`);
    assert.ok(lines >= 1);
  });

  it('on reload refuses a certificate revoked after start, leaves its established connection flowing, and serves the others', async () => {
    const [mtls] = proxy.ports;
    const live = await connected(mtls!, carol);
    assert.equal(await echo(live, 'before'), 'before');
    await makeCrl(ca, { revoked: [bob, carol], out: crlPem });
    const { stdout } = await run(process.execPath, [CLI, 'reload', '--admin-socket', proxy.adminSocket]);
    assert.match(stdout, /"ok":\s*true/);
    await eventually(async () => (await attempt(mtls!, carol)) === REVOKED, 10_000, 'carol to be refused');
    assert.equal(await attempt(mtls!, carol, { maxVersion: 'TLSv1.2' }), REVOKED);
    assert.equal(await attempt(mtls!, alice), 'served');
    assert.equal(await echo(live, 'after the reload'), 'after the reload', 'the established connection is untouched');
    live.destroy();
  });

  it('refuses a reload whose CRL is not a CRL and keeps the running one', async () => {
    const [mtls] = proxy.ports;
    fs.copyFileSync(ca.certFile, crlPem);
    const r = await run(process.execPath, [CLI, 'reload', '--admin-socket', proxy.adminSocket]).then(
      () => assert.fail('reload should exit 1'),
      (e: { stderr: string }) => e,
    );
    assert.match(r.stderr, /client_auth\.crl: .*clients\.crl\.pem.*not a CRL/);
    assert.equal(await attempt(mtls!, carol), REVOKED, 'the last good CRL still applies');
    assert.equal(await attempt(mtls!, alice), 'served');
  });
});
