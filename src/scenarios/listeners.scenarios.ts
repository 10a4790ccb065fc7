// What a listener serves — certificates by SNI, ALPN routes, client certificates, PROXY headers, backend pools — also across an upgrade; run per mode.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { adminRequest } from '../admin/client.js';
import { PP2 } from '../edge/proxy-protocol.js';
import type { ConnectionStatus } from '../core/types.js';
import { issue, makeCa, type Ca, type Pair } from '../testkit/pki.js';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { CLI, startProxyProcess, tempDir, type RunningProxy } from '../testkit/proxy-process.js';
import { modeArgs, type Mode } from './real-clients.scenarios.js';
import { proxyProtocolEcho, taggedEcho, type TestServer } from '../testkit/tagged-backends.js';
import { echo } from '../testkit/tls-echo.js';
import { alertCode } from '../testkit/alert-code.js';

interface Connected {
  socket: tls.TLSSocket;
  /** The first bytes the backend sent (its tag), when asked to wait for them. */
  first?: string;
}

function connect(port: number, o: tls.ConnectionOptions & { waitFor?: number } = {}): Promise<Connected> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...o });
    socket.once('error', reject);
    socket.once('secureConnect', () => {
      if (!o.waitFor) return resolve({ socket });
      let got = '';
      const onData = (d: Buffer) => {
        got += d.toString();
        if (got.length >= o.waitFor!) {
          socket.off('data', onData);
          resolve({ socket, first: got });
        }
      };
      socket.on('data', onData);
    });
  });
}

/** Connects expecting the proxy to refuse: resolves with the client's error code (after the handshake for TLS 1.3). */
function refused(port: number, o: tls.ConnectionOptions): Promise<string> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...o });
    socket.on('secureConnect', () => socket.write('x'));
    socket.on('data', () => resolve('served'));
    socket.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ? alertCode(e.code) : e.message));
    socket.once('close', () => setTimeout(() => resolve('closed without an alert'), 100));
  });
}

function peerNames(s: tls.TLSSocket): string {
  const c = s.getPeerX509Certificate()!;
  return c.subjectAltName ?? c.subject;
}

const run = promisify(execFile);

export function listenerScenarios(mode: Mode): void {
  describe('listeners: SNI, ALPN, client certificates and PROXY headers', () => {
    let dir: string;
    let ca: Ca;
    let clientGood: Pair;
    let clientStranger: Pair;
    let proxy: RunningProxy;
    let a: TestServer;
    let b: TestServer;
    let pp: Awaited<ReturnType<typeof proxyProtocolEcho>>;
    const stop: Array<() => Promise<unknown>> = [];

    before(async () => {
      dir = tempDir('listeners');
      ca = await makeCa(dir, 'Clients CA');
      const [siteA, siteB, wild, dualEc, dualRsa, fallback] = await Promise.all([
        issue(dir, { cn: 'a.test', dns: ['a.test'] }),
        issue(dir, { cn: 'b.test', dns: ['b.test', 'www.b.test'] }),
        issue(dir, { cn: 'wild', dns: ['*.wild.test'] }),
        issue(dir, { cn: 'dual.test', dns: ['dual.test'], kind: 'ec' }),
        issue(dir, { cn: 'dual.test', dns: ['dual.test'], kind: 'rsa' }),
        issue(dir, { cn: 'default.test' }),
      ]);
      clientGood = await issue(dir, { cn: 'alice', subjectExtra: '/O=Acme', client: true, ca });
      clientStranger = await issue(dir, { cn: 'mallory', client: true });
      [a, b, pp] = await Promise.all([taggedEcho('A'), taggedEcho('B'), proxyProtocolEcho()]);
      stop.push(a.close, b.close, pp.close);
      const pair = (p: Pair, extra = '') => `{ cert = ${JSON.stringify(p.certFile)}, key = ${JSON.stringify(p.keyFile)}${extra} }`;
      proxy = await startProxyProcess({
        backendPort: 0,
        noListenFlags: true,
        args: modeArgs(mode),
        config: `workers = 1
[[listener]]
name = "sites"
listen = "127.0.0.1:0"
backend = "127.0.0.1:${a.port}"
alpn = ["h2", "http/1.1"]
certs = [${[pair(siteA), pair(siteB), pair(wild), pair(dualEc), pair(dualRsa), pair(fallback, ', default = true')].join(', ')}]
[[listener.route]]
alpn = "h2"
backend = "127.0.0.1:${b.port}"

[[listener]]
name = "mtls"
listen = "127.0.0.1:0"
backend = "127.0.0.1:${pp.port}"
cert = ${JSON.stringify(siteA.certFile)}
key = ${JSON.stringify(siteA.keyFile)}
proxy_protocol = "v2"
alpn = ["redis"]
client_auth = { ca = ${JSON.stringify(ca.certFile)} }

[[listener]]
name = "mtls-optional"
listen = "127.0.0.1:0"
backend = "127.0.0.1:${pp.port}"
cert = ${JSON.stringify(siteA.certFile)}
key = ${JSON.stringify(siteA.keyFile)}
proxy_protocol = "v1"
client_auth = { ca = ${JSON.stringify(ca.certFile)}, verify = "optional" }
`,
      });
      stop.unshift(() => proxy.stop());
    });
    after(async () => {
      for (const s of stop) await s();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it('serves each SNI name its own certificate, wildcards one label deep, and the default to anything else', async () => {
      const [sites] = proxy.ports;
      const cases: [string | undefined, RegExp][] = [
        ['a.test', /DNS:a\.test/],
        ['www.b.test', /DNS:b\.test, DNS:www\.b\.test/],
        ['B.TEST', /DNS:b\.test/],
        ['x.wild.test', /DNS:\*\.wild\.test/],
        ['x.y.wild.test', /CN=default\.test/],
        ['unknown.test', /CN=default\.test/],
        [undefined, /CN=default\.test/],
      ];
      for (const [servername, want] of cases) {
        const { socket } = await connect(sites!, { servername });
        assert.match(peerNames(socket), want, `SNI ${servername}`);
        socket.destroy();
      }
    });

    it('serves the ECDSA or the RSA chain of one name by what the client can verify', async () => {
      const [sites] = proxy.ports;
      const rsa = await connect(sites!, { servername: 'dual.test', sigalgs: 'rsa_pss_rsae_sha256:rsa_pkcs1_sha256' });
      assert.equal(rsa.socket.getPeerX509Certificate()!.publicKey.asymmetricKeyType, 'rsa');
      rsa.socket.destroy();
      const ec = await connect(sites!, { servername: 'dual.test', sigalgs: 'ecdsa_secp256r1_sha256' });
      assert.equal(ec.socket.getPeerX509Certificate()!.publicKey.asymmetricKeyType, 'ec');
      ec.socket.destroy();
    });

    it('negotiates ALPN, routes h2 to its own backend, and shows the protocol in status', async () => {
      const [sites] = proxy.ports;
      const h2 = await connect(sites!, { servername: 'a.test', ALPNProtocols: ['h2'], waitFor: 1 });
      const h1 = await connect(sites!, { servername: 'a.test', ALPNProtocols: ['http/1.1'], waitFor: 1 });
      const none = await connect(sites!, { servername: 'b.test', waitFor: 1 });
      assert.deepEqual([h2.socket.alpnProtocol, h1.socket.alpnProtocol, none.socket.alpnProtocol], ['h2', 'http/1.1', false]);
      assert.deepEqual([h2.first, h1.first, none.first], ['B', 'A', 'A']);
      assert.equal(await echo(h2.socket, 'ping'), 'ping');
      const conns = (await proxy.status()).connections;
      const mine = (s: tls.TLSSocket) => conns.find((c) => c.client.endsWith(`:${s.localPort}`));
      assert.deepEqual([mine(h2.socket)?.alpn, mine(h2.socket)?.sni, mine(h2.socket)?.listener], ['h2', 'a.test', 'sites']);
      assert.equal(mine(h2.socket)?.backend, `127.0.0.1:${b.port}`);
      assert.equal(mine(none.socket)?.alpn, undefined);
      assert.equal(mine(h2.socket)?.mode, mode);
      // The admin API's `connections` answers the same list without the rest of the status.
      const listed = await adminRequest<ConnectionStatus[]>(proxy.adminSocket, 'connections');
      assert.equal(listed.find((c) => c.client.endsWith(`:${h2.socket.localPort}`))?.alpn, 'h2');
      for (const c of [h2, h1, none]) c.socket.destroy();
    });

    it('accepts a client certificate from the CA and sends its subject to the backend in PROXY v2 TLVs', async () => {
      const [, mtls] = proxy.ports;
      const before = pp.headers.length;
      const { socket } = await connect(mtls!, {
        cert: fs.readFileSync(clientGood.certFile),
        key: fs.readFileSync(clientGood.keyFile),
        servername: 'a.test',
        ALPNProtocols: ['redis'],
      });
      assert.equal(await echo(socket, 'hello'), 'hello');
      const h = pp.headers[before]!;
      assert.equal(h.version, 2);
      assert.equal(h.command, 'PROXY');
      assert.deepEqual(h.source, { host: '127.0.0.1', port: socket.localPort });
      assert.deepEqual(h.destination, { host: '127.0.0.1', port: mtls });
      assert.equal(h.tlvs.get(PP2.TYPE_AUTHORITY)?.toString(), 'a.test');
      assert.equal(h.tlvs.get(PP2.TYPE_ALPN)?.toString(), 'redis');
      assert.match(h.tlvs.get(PP2.TYPE_UNIQUE_ID)?.toString() ?? '', /^c\d+$/);
      assert.equal(h.crcOk, true);
      assert.ok(h.ssl, 'an SSL TLV');
      assert.equal(h.ssl.client & (PP2.CLIENT_SSL | PP2.CLIENT_CERT_CONN), PP2.CLIENT_SSL | PP2.CLIENT_CERT_CONN);
      assert.equal(h.ssl.verify, 0);
      assert.equal(h.ssl.sub.get(PP2.SUBTYPE_SSL_VERSION)?.toString(), 'TLSv1.3');
      assert.equal(h.ssl.sub.get(PP2.SUBTYPE_SSL_CN)?.toString(), 'alice');
      assert.match(h.ssl.sub.get(PP2.SUBTYPE_SSL_CIPHER)?.toString() ?? '', /^TLS_/);
      assert.match(h.tlvs.get(PP2.TYPE_IRONSOCKET_SUBJECT)?.toString() ?? '', /CN=alice/);
      assert.match(h.tlvs.get(PP2.TYPE_IRONSOCKET_SUBJECT)?.toString() ?? '', /O=Acme/);
      const conn = (await proxy.status()).connections.find((c) => c.client.endsWith(`:${socket.localPort}`));
      assert.match(conn?.clientSubject ?? '', /CN=alice/);
      socket.destroy();
    });

    it('refuses a missing client certificate with certificate_required (TLS 1.3) or handshake_failure (TLS 1.2)', async () => {
      const [, mtls] = proxy.ports;
      assert.equal(await refused(mtls!, {}), 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED');
      assert.equal(await refused(mtls!, { maxVersion: 'TLSv1.2' }), 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE');
    });

    it('refuses a client certificate from another CA with unknown_ca, also where client certificates are optional', async () => {
      const [, mtls, optional] = proxy.ports;
      const stranger = { cert: fs.readFileSync(clientStranger.certFile), key: fs.readFileSync(clientStranger.keyFile) };
      assert.equal(await refused(mtls!, stranger), 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA');
      assert.equal(await refused(optional!, stranger), 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA');
      const counters = (await proxy.status()).counters;
      assert.ok((counters.handshake_failed_client_cert_untrusted ?? 0) >= 2, JSON.stringify(counters));
      assert.ok((counters.handshake_failed_client_cert_missing ?? 0) >= 2, JSON.stringify(counters));
    });

    it('serves a client without a certificate where they are optional, with a PROXY v1 line naming it', async () => {
      const [, , optional] = proxy.ports;
      const before = pp.headers.length;
      const { socket } = await connect(optional!, {});
      assert.equal(await echo(socket, 'v1 works'), 'v1 works');
      const h = pp.headers[before]!;
      assert.equal(h.version, 1);
      assert.equal(h.family, 'TCP4');
      assert.deepEqual(h.source, { host: '127.0.0.1', port: socket.localPort });
      assert.deepEqual(h.destination, { host: '127.0.0.1', port: optional });
      assert.deepEqual(pp.errors, []);
      socket.destroy();
    });
    it('keeps ALPN-routed and client-certificate connections flowing across an upgrade, with what status knows of them', async () => {
      const [sites, mtls] = proxy.ports;
      const h2 = await connect(sites!, { servername: 'a.test', ALPNProtocols: ['h2'], waitFor: 1 });
      const client = { cert: fs.readFileSync(clientGood.certFile), key: fs.readFileSync(clientGood.keyFile), servername: 'a.test' };
      const m = await connect(mtls!, client);
      assert.equal(await echo(m.socket, 'first'), 'first');
      const { stdout } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket]);
      const outcome = JSON.parse(stdout) as { ok: boolean; pid: number; moved: number };
      assert.deepEqual([outcome.ok, outcome.pid], [true, proxy.pid]);
      assert.ok(outcome.moved >= 2, stdout);
      assert.equal(await echo(h2.socket, 'h2 after'), 'h2 after');
      assert.equal(await echo(m.socket, 'mtls after'), 'mtls after');
      const conns = (await proxy.status()).connections;
      const of = (s: tls.TLSSocket) => conns.find((c) => c.client.endsWith(`:${s.localPort}`));
      assert.deepEqual([of(h2.socket)?.listener, of(h2.socket)?.sni, of(h2.socket)?.alpn, of(h2.socket)?.mode], ['sites', 'a.test', 'h2', mode]);
      assert.match(of(m.socket)?.clientSubject ?? '', /CN=alice/);
      const fresh = await connect(sites!, { servername: 'www.b.test' });
      assert.match(peerNames(fresh.socket), /DNS:www\.b\.test/, 'the new image serves the same certificates');
      assert.equal(await refused(mtls!, {}), 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED');
      for (const c of [h2, m, fresh]) c.socket.destroy();
    });
  });

  describe('backend pools', () => {
    it('spreads connections round robin and skips a backend that refused, for the retry period', async () => {
      const dir = tempDir('pool');
      const [a, b, dead] = await Promise.all([taggedEcho('A'), taggedEcho('B'), taggedEcho('X')]);
      await dead.close(); // a port where nothing listens any more
      const proxy = await startProxyProcess({
        backendPort: 0,
        noListenFlags: true,
        args: modeArgs(mode),
        config: `workers = 1\n[timeouts]\nbackend_retry = "1m"\n[[listener]]\nlisten = "127.0.0.1:0"\nbackends = ["127.0.0.1:${a.port}", "127.0.0.1:${dead.port}", "127.0.0.1:${b.port}"]\n`,
      });
      try {
        const tags: string[] = [];
        for (let i = 0; i < 6; i++) {
          const c = await connect(proxy.port, { waitFor: 1 });
          tags.push(c.first!);
          c.socket.destroy();
        }
        // A, then the dead one (refused, so B serves), then B, A, B, A...: nobody is turned away.
        assert.deepEqual(tags.sort(), ['A', 'A', 'A', 'B', 'B', 'B']);
        const counters = (await proxy.status()).counters;
        assert.equal(counters.backend_refused, 1, 'the dead backend was tried once, then skipped');
        assert.equal(counters.handshakes_ok, 6);
      } finally {
        await proxy.stop();
        await Promise.all([a.close(), b.close()]);
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}
