// The libssl engine's options (ALPN, SNI, several pairs, client certificates, TLS 1.2, ciphers, ticket keyrings) against node:tls clients.

import { test, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto, { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import tls from 'node:tls';
import { once } from 'node:events';
import { LibsslServer, type AcceptOptions, type LibsslServerOptions, type LibsslStep } from './libssl.js';
import { HANDSHAKE_TEST_LIMIT, listenLibssl, opensslErrorQueued } from '../testkit/libssl-listen.js';
import { TicketKeyring, TICKET_KEY_BYTES } from './ticket-keys.js';
import { KeylogCollector } from './keylog.js';
import { makeCa, issue, makeCrl, type Pair } from '../testkit/pki.js';
import { tempDir } from '../testkit/proxy-process.js';

const dir = tempDir('libssl-features');
after(() => fs.rmSync(dir, { recursive: true, force: true }));
/** What the current test opened (sockets, listeners, handshakes, servers), closed after it whatever happened. */
const opened: Array<() => void> = [];
afterEach(() => opened.splice(0).forEach((close) => close()));

const ca = await makeCa(dir);
const clientCa = await makeCa(dir, 'Client CA');
const otherCa = await makeCa(dir, 'Other CA');
const leaf = await issue(dir, { cn: 'localhost', dns: ['localhost'], ca });
const rsaLeaf = await issue(dir, { cn: 'localhost', dns: ['localhost'], kind: 'rsa', ca });
const otherLeaf = await issue(dir, { cn: 'other.test', dns: ['other.test'], ca });
const alice = await issue(dir, { cn: 'alice', subjectExtra: '/O=Acme', client: true, ca: clientCa });
const bob = await issue(dir, { cn: 'bob', client: true, ca: clientCa });
const mallory = await issue(dir, { cn: 'mallory', client: true, ca: otherCa });
const crl = fs.readFileSync(await makeCrl(clientCa, { revoked: [bob] }), 'utf8');
const caPem = fs.readFileSync(ca.certFile);
const pairOf = (p: Pair) => ({ certificateChain: fs.readFileSync(p.certFile), key: fs.readFileSync(p.keyFile) });
const fingerprint = (p: Pair) => new X509Certificate(fs.readFileSync(p.certFile)).fingerprint256;

/** A server freed after the test. */
function serve(o: Partial<LibsslServerOptions> = {}): LibsslServer {
  const server = new LibsslServer({ pairs: [pairOf(leaf)], minVersion: 'TLSv1.2', ...o });
  opened.push(() => server.free());
  return server;
}

/** A loopback listener feeding the client's bytes to `server.accept(options)` one whole record at a time. */
const listen = (server: LibsslServer, options: AcceptOptions = {}) =>
  listenLibssl(() => {
    const hs = server.accept(options);
    opened.push(() => hs.free());
    return hs;
  }, opened);

function connect(port: number, extra: tls.ConnectionOptions = {}) {
  const keylog: Buffer[] = [];
  const socket = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', ca: caPem, ...extra });
  socket.on('keylog', (line) => keylog.push(Buffer.from(line)));
  socket.on('error', () => {});
  opened.push(() => socket.destroy());
  // Listening from the start: either may come before the server's side of the handshake ends.
  const secure = new Promise<void>((resolve, reject) => (socket.once('secureConnect', resolve), socket.once('error', reject)));
  secure.catch(() => {}); // awaited only when the server's side succeeded
  const session = new Promise<Buffer>((resolve) => socket.once('session', resolve));
  return { socket, keylog, secure, session };
}

/** One client against `server`: the server's side once its handshake ended, and the client's socket. */
async function handshake(server: LibsslServer, extra: tls.ConnectionOptions = {}, options: AcceptOptions = {}) {
  const l = await listen(server, options);
  const client = connect(l.port, extra);
  const s = await l.next();
  if (s.last.state === 'established') await client.secure;
  return { ...s, ...client };
}

/** Every test ends with the thread's OpenSSL error queue empty (node:crypto shares it). */
const queueIsEmpty = () => assert.equal(opensslErrorQueued(), 0, "OpenSSL's error queue is empty");
/** The last byte of a failed step's output: the alert description. */
const alertOf = (step: LibsslStep) => (assert.equal(step.output[0], 21, 'an alert record'), step.output.at(-1));

test("ALPN selects the server's most preferred protocol among those the client offers", HANDSHAKE_TEST_LIMIT, async () => {
  const s = await handshake(serve({ alpn: ['h2', 'http/1.1'] }), { ALPNProtocols: ['http/1.1', 'h2'] });
  assert.equal(s.last.state, 'established');
  assert.equal(s.hs.alpn, 'h2');
  assert.equal(s.socket.alpnProtocol, 'h2');
  const none = await handshake(serve({ alpn: ['h2'] }));
  assert.equal(none.last.state, 'established', 'a client that offers no ALPN is served without');
  assert.equal(none.hs.alpn, undefined);
  queueIsEmpty();
});

test('a client whose ALPN offer does not overlap the server list gets a fatal no_application_protocol alert', HANDSHAKE_TEST_LIMIT, async () => {
  const s = await handshake(serve({ alpn: ['h2', 'http/1.1'] }), { ALPNProtocols: ['spdy/3'] });
  assert.equal(s.last.state, 'failed');
  assert.equal(alertOf(s.last), 120, 'no_application_protocol');
  queueIsEmpty();
});

test("a server without ALPN ignores the client's offer: the handshake succeeds with no protocol selected", HANDSHAKE_TEST_LIMIT, async () => {
  const s = await handshake(serve(), { ALPNProtocols: ['h2'] });
  assert.equal(s.last.state, 'established');
  assert.equal(s.hs.alpn, undefined);
  assert.equal(s.socket.alpnProtocol, false);
  queueIsEmpty();
});

test(
  'SNI gives the client the certificate of the server the sni callback returns, and a client without SNI the default one',
  HANDSHAKE_TEST_LIMIT,
  async () => {
    const server = serve();
    const other = serve({ pairs: [pairOf(otherLeaf)] });
    const asked: string[] = [];
    const sni = (name: string) => (asked.push(name), name === 'other.test' ? other : server);
    const named = await handshake(server, { servername: 'other.test' }, { sni });
    assert.equal(named.last.state, 'established');
    assert.equal(named.hs.servername, 'other.test');
    assert.equal(named.socket.getPeerX509Certificate()!.fingerprint256, fingerprint(otherLeaf));
    const local = await handshake(server, {}, { sni });
    assert.equal(local.socket.getPeerX509Certificate()!.fingerprint256, fingerprint(leaf), 'the name that maps to this server keeps its certificate');
    const anonymous = await handshake(server, { servername: '', checkServerIdentity: () => undefined }, { sni });
    assert.equal(anonymous.last.state, 'established');
    assert.equal(anonymous.hs.servername, undefined);
    assert.equal(anonymous.socket.getPeerX509Certificate()!.fingerprint256, fingerprint(leaf));
    assert.deepEqual(asked, ['other.test', 'localhost'], 'the callback hears each name sent, and nothing without one');
    queueIsEmpty();
  },
);

test('a server with an ECDSA and an RSA pair gives a TLS 1.2 client the certificate its cipher list asks for', HANDSHAKE_TEST_LIMIT, async () => {
  const server = serve({ pairs: [pairOf(leaf), pairOf(rsaLeaf)] });
  for (const [ciphers, expected] of [
    ['ECDHE-RSA-AES128-GCM-SHA256', rsaLeaf],
    ['ECDHE-ECDSA-AES128-GCM-SHA256', leaf],
  ] as const) {
    const s = await handshake(server, { maxVersion: 'TLSv1.2', ciphers });
    assert.equal(s.last.state, 'established', ciphers);
    assert.equal(s.hs.cipher, ciphers);
    assert.equal(s.socket.getPeerX509Certificate()!.fingerprint256, fingerprint(expected), ciphers);
  }
  queueIsEmpty();
});

/** A server asking for client certificates under `clientCa` (and the CRL when `withCrl`). */
const askingServer = (withCrl = false, o: Partial<LibsslServerOptions> = {}) =>
  serve({ clientAuth: { ca: fs.readFileSync(clientCa.certFile), ...(withCrl ? { crl: [crl] } : {}) }, ...o });
/** A client presenting `p`: its leaf only, or its whole chain file. */
const presenting = (p: Pair, chain = false) => {
  const pem = fs.readFileSync(p.certFile, 'utf8');
  return { cert: chain ? pem : pem.slice(0, pem.indexOf('-----END CERTIFICATE-----') + 26), key: fs.readFileSync(p.keyFile) };
};

test('a client certificate issued by the trusted CA is reported verified, with the subject, CN and fingerprint node reads', HANDSHAKE_TEST_LIMIT, async () => {
  const expected = new X509Certificate(fs.readFileSync(alice.certFile));
  for (const maxVersion of ['TLSv1.3', 'TLSv1.2'] as const) {
    const s = await handshake(askingServer(true), { maxVersion, ...presenting(alice, true) });
    assert.equal(s.last.state, 'established', maxVersion);
    assert.deepEqual(s.hs.clientCertificate, {
      verified: true,
      subject: expected.subject.split('\n').join(', '),
      subjectCN: 'alice',
      fingerprint256: expected.fingerprint256,
    });
    assert.equal(s.hs.clientCertificate!.subject, 'CN=alice, O=Acme');
  }
  queueIsEmpty();
});

test("a client certificate from another CA is reported unverified with OpenSSL's reason, and the handshake still succeeds", HANDSHAKE_TEST_LIMIT, async () => {
  for (const [chain, error] of [
    // What OpenSSL 3 (and node:tls's authorizationError, checked) says: a lone leaf, or a chain ending in an untrusted root.
    [false, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE'],
    [true, 'SELF_SIGNED_CERT_IN_CHAIN'],
  ] as const) {
    const s = await handshake(askingServer(), presenting(mallory, chain));
    assert.equal(s.last.state, 'established', 'the verdict is reported, not enforced');
    assert.equal(s.socket.authorized, true);
    const cc = s.hs.clientCertificate!;
    assert.deepEqual([cc.verified, cc.error, cc.subjectCN, cc.fingerprint256], [false, error, 'mallory', fingerprint(mallory)]);
  }
  queueIsEmpty();
});

test('a revoked client certificate is reported CERT_REVOKED under the CRL, and verified without it', HANDSHAKE_TEST_LIMIT, async () => {
  const revoked = await handshake(askingServer(true), presenting(bob));
  assert.equal(revoked.last.state, 'established');
  assert.deepEqual([revoked.hs.clientCertificate?.verified, revoked.hs.clientCertificate?.error], [false, 'CERT_REVOKED']);
  const unchecked = await handshake(askingServer(false), presenting(bob));
  assert.equal(unchecked.hs.clientCertificate?.verified, true);
  queueIsEmpty();
});

test('a client that sends no certificate has none reported and completes the handshake', HANDSHAKE_TEST_LIMIT, async () => {
  for (const maxVersion of ['TLSv1.3', 'TLSv1.2'] as const) {
    const s = await handshake(askingServer(true), { maxVersion });
    assert.equal(s.last.state, 'established', maxVersion);
    assert.equal(s.hs.clientCertificate, undefined);
  }
  queueIsEmpty();
});

/** The bodies of the plaintext handshake messages of type `type` the server sent (TLS 1.2's first flight). */
function handshakeMessages(sent: Buffer[], type: number): Buffer[] {
  const records = Buffer.concat(sent);
  const chunks: Buffer[] = [];
  for (let at = 0; at + 5 <= records.length && records[at] === 22; at += 5 + records.readUInt16BE(at + 3))
    chunks.push(records.subarray(at + 5, at + 5 + records.readUInt16BE(at + 3)));
  const stream = Buffer.concat(chunks);
  const found: Buffer[] = [];
  for (let at = 0; at + 4 <= stream.length; at += 4 + stream.readUIntBE(at + 1, 3))
    if (stream[at] === type) found.push(stream.subarray(at + 4, at + 4 + stream.readUIntBE(at + 1, 3)));
  return found;
}

test('the TLS 1.2 CertificateRequest names the trusted client CA', HANDSHAKE_TEST_LIMIT, async () => {
  const s = await handshake(askingServer(), { maxVersion: 'TLSv1.2' });
  const [request] = handshakeMessages(s.sent, 13);
  assert.ok(request, 'a CertificateRequest was sent');
  assert.ok(request.includes('Client CA'), 'its certificate_authorities hold the CA subject');
  assert.deepEqual(handshakeMessages((await handshake(serve(), { maxVersion: 'TLSv1.2' })).sent, 13), [], 'none without clientAuth');
  queueIsEmpty();
});

test(
  'a TLS 1.2 handshake reports its version, the ServerHello random, and the master secret and client random the client logged',
  HANDSHAKE_TEST_LIMIT,
  async () => {
    const s = await handshake(serve(), { maxVersion: 'TLSv1.2' });
    assert.equal(s.last.state, 'established');
    assert.equal(s.hs.version, 'TLSv1.2');
    const [serverHello] = handshakeMessages(s.sent, 2);
    assert.deepEqual(s.hs.serverRandom, serverHello!.subarray(2, 34), 'the random of the ServerHello sent');
    const client = new KeylogCollector();
    s.keylog.forEach((line) => client.add(line));
    assert.ok(client.masterSecret && client.clientRandom, 'the client logged CLIENT_RANDOM');
    assert.deepEqual(s.hs.secrets.masterSecret, client.masterSecret);
    assert.deepEqual(s.hs.secrets.clientRandom, client.clientRandom);
    assert.equal(s.hs.secrets.serverTrafficSecret0, undefined, 'no TLS 1.3 secret');
    queueIsEmpty();
  },
);

test('a cipher list with a TLS 1.3 suite and a TLS 1.2 cipher gives a TLS 1.3 client that suite', HANDSHAKE_TEST_LIMIT, async () => {
  const s = await handshake(serve({ ciphers: 'TLS_CHACHA20_POLY1305_SHA256:ECDHE-ECDSA-CHACHA20-POLY1305' }));
  assert.equal(s.hs.version, 'TLSv1.3');
  assert.equal(s.hs.cipher, 'TLS_CHACHA20_POLY1305_SHA256');
  assert.equal(s.socket.getCipher().standardName, 'TLS_CHACHA20_POLY1305_SHA256');
  queueIsEmpty();
});

test(
  'a cipher list without TLS 1.3 suites means TLS 1.2 at most, and one with only TLS 1.3 suites refuses a TLS 1.2 client',
  HANDSHAKE_TEST_LIMIT,
  async () => {
    const capped = await handshake(serve({ ciphers: 'ECDHE-ECDSA-AES256-GCM-SHA384' }));
    assert.equal(capped.last.state, 'established');
    assert.equal(capped.hs.version, 'TLSv1.2');
    assert.equal(capped.hs.cipher, 'ECDHE-ECDSA-AES256-GCM-SHA384');
    const onlyNew = serve({ ciphers: 'TLS_AES_256_GCM_SHA384' });
    const refused = await handshake(onlyNew, { maxVersion: 'TLSv1.2' });
    assert.equal(refused.last.state, 'failed');
    assert.equal(alertOf(refused.last), 70, 'protocol_version');
    assert.equal((await handshake(onlyNew)).hs.version, 'TLSv1.3');
    queueIsEmpty();
  },
);

const key = () => crypto.randomBytes(TICKET_KEY_BYTES);
const ring = (keys: Buffer[], encrypt: number, onUnknown?: () => void) =>
  new TicketKeyring({ keys: new Uint8Array(Buffer.concat(keys)), encrypt, lifetimeS: 300 }, onUnknown);
const nameOf = (k: Buffer) => k.subarray(0, 16);

/** A first handshake's ticket and session (the session to resume with, the ticket as the client holds it). */
async function ticketFrom(server: LibsslServer, maxVersion: tls.SecureVersion) {
  const s = await handshake(server, { maxVersion });
  assert.equal(s.last.state, 'established');
  const session = await s.session;
  return { session, ticket: s.socket.getTLSTicket()!, resumed: s.hs.resumed };
}

for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
  test(
    `${version}: a ticket under key B resumes where the ring holds A and B, and not where it holds only A (onUnknown told once)`,
    HANDSHAKE_TEST_LIMIT,
    async () => {
      const [a, b] = [key(), key()];
      let unknown = 0;
      const issuer = serve({ tickets: ring([a, b], 1) });
      const both = serve({ tickets: ring([a, b], 0) });
      const onlyA = serve({ tickets: ring([a], 0, () => unknown++) });
      const first = await ticketFrom(issuer, version);
      assert.equal(first.resumed, false);
      assert.deepEqual(first.ticket.subarray(0, 16), nameOf(b), "the ticket starts with the encrypting key's name");
      const resumed = await handshake(both, { maxVersion: version, session: first.session });
      assert.equal(resumed.last.state, 'established');
      assert.equal(resumed.hs.resumed, true);
      assert.equal(resumed.socket.isSessionReused(), true);
      const full = await handshake(onlyA, { maxVersion: version, session: first.session });
      assert.equal(full.last.state, 'established', 'an unknown ticket means a full handshake');
      assert.equal(full.hs.resumed, false);
      assert.equal(unknown, 1);
      queueIsEmpty();
    },
  );
}

test("after ring.replace the next ticket is under the new set's encrypting key", HANDSHAKE_TEST_LIMIT, async () => {
  const [a, b, c, d] = [key(), key(), key(), key()];
  const keyring = ring([a, b], 0);
  const server = serve({ tickets: keyring });
  assert.deepEqual((await ticketFrom(server, 'TLSv1.3')).ticket.subarray(0, 16), nameOf(a));
  keyring.replace({ keys: new Uint8Array(Buffer.concat([c, d])), encrypt: 1, lifetimeS: 300 });
  assert.deepEqual((await ticketFrom(server, 'TLSv1.3')).ticket.subarray(0, 16), nameOf(d));
  queueIsEmpty();
});

test('a ticket resumes only on a server with the same session ID context, the keys being the same', HANDSHAKE_TEST_LIMIT, async () => {
  const k = key();
  for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
    const { session } = await ticketFrom(serve({ tickets: ring([k], 0), sessionIdContext: 'a' }), version);
    for (const [context, expected] of [
      ['a', true],
      ['b', false],
    ] as const) {
      const s = await handshake(serve({ tickets: ring([k], 0), sessionIdContext: context }), { maxVersion: version, session });
      assert.equal(s.last.state, 'established', `${version} ${context}`);
      assert.equal(s.hs.resumed, expected, `${version} ${context}`);
    }
  }
  queueIsEmpty();
});

test('a server verifying client certificates resumes its tickets without a session ID context given (a default one is set)', HANDSHAKE_TEST_LIMIT, async () => {
  const server = serve({ clientAuth: { ca: fs.readFileSync(clientCa.certFile) } });
  for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
    const { session } = await ticketFrom(server, version);
    const s = await handshake(server, { maxVersion: version, session });
    assert.equal(s.last.state, 'established', version);
    assert.equal(s.hs.resumed, true, version);
  }
  queueIsEmpty();
});
