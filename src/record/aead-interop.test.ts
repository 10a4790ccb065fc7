// Record protection against real OpenSSL: a node:tls handshake captured through a TCP relay, decrypted by us with keys from the key log.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { ContentType, RecordProtection } from './aead.js';
import { deriveDirectionKeys, tls13TrafficKeys } from './keys.js';
import { SUITES, suiteByName, type CipherSuite } from './suites.js';
import { KeylogCollector } from '../handshake/keylog.js';
import { parseHello, serverRandomFromServerHello } from '../handshake/hello.js';

interface RawRecord {
  header: Buffer;
  body: Buffer;
}

function splitRecords(stream: Buffer): RawRecord[] {
  const out: RawRecord[] = [];
  for (let o = 0; o < stream.length;) {
    assert.ok(o + 5 <= stream.length, 'truncated record header in capture');
    const len = stream.readUInt16BE(o + 3);
    out.push({ header: stream.subarray(o, o + 5), body: stream.subarray(o + 5, o + 5 + len) });
    o += 5 + len;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Interop: a real node:tls (OpenSSL) handshake through a capturing TCP relay, decrypted by us.

interface Capture {
  c2s: Buffer;
  s2c: Buffer;
  keylog: KeylogCollector;
  cipher: string;
  protocol: string;
}

let certDir = '';
let certs: { ec: { key: Buffer; cert: Buffer }; rsa: { key: Buffer; cert: Buffer } } | undefined;

function capture(suite: CipherSuite, message: string): Promise<Capture> {
  const { ec, rsa } = certs!;
  return new Promise((resolve, reject) => {
    const keylog = new KeylogCollector();
    const server = tls.createServer({ key: [ec.key, rsa.key], cert: [ec.cert, rsa.cert] }, (sock) => {
      sock.on('data', (d: Buffer) => sock.write(`pong: ${d.toString()}`));
      sock.on('error', () => {});
    });
    server.on('keylog', (line) => keylog.add(line));
    const c2s: Buffer[] = [];
    const s2c: Buffer[] = [];
    let closed = 0;
    let info = { cipher: '', protocol: '' };
    const finish = () => {
      if (++closed < 3) return;
      server.close();
      relay.close();
      resolve({ c2s: Buffer.concat(c2s), s2c: Buffer.concat(s2c), keylog, ...info });
    };
    const relay = net.createServer((down) => {
      const up = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
      down.on('data', (d) => (c2s.push(Buffer.from(d)), up.write(d)));
      up.on('data', (d) => (s2c.push(Buffer.from(d)), down.write(d)));
      down.on('end', () => up.end());
      up.on('end', () => down.end());
      down.on('close', finish);
      up.on('close', finish);
      down.on('error', reject);
      up.on('error', reject);
    });
    server.listen(0, '127.0.0.1', () =>
      relay.listen(0, '127.0.0.1', () => {
        const client = tls.connect({
          port: (relay.address() as net.AddressInfo).port,
          host: '127.0.0.1',
          rejectUnauthorized: false,
          minVersion: suite.version,
          maxVersion: suite.version,
          ciphers: suite.name,
        });
        let reply = '';
        client.on('secureConnect', () => {
          info = { cipher: client.getCipher().name, protocol: client.getProtocol() ?? '' };
          client.write(message);
        });
        client.on('data', (d: Buffer) => {
          reply += d.toString();
          if (reply === `pong: ${message}`) client.end();
        });
        client.on('close', finish);
        client.on('error', reject);
      }),
    );
  });
}

/** Opens protected records in order, switching from handshake keys to application keys after Finished. */
function decryptFlight(records: RawRecord[], hs: RecordProtection | undefined, ap: RecordProtection) {
  const opened: { type: number; plaintext: Buffer; phase: 'hs' | 'ap' }[] = [];
  let current = hs ?? ap;
  let pending = Buffer.alloc(0);
  for (const r of records) {
    const { type, plaintext } = current.open(r.header, r.body);
    opened.push({ type, plaintext, phase: current === ap ? 'ap' : 'hs' });
    if (current === hs && type === ContentType.handshake) {
      pending = Buffer.concat([pending, plaintext]);
      while (pending.length >= 4 && pending.length >= 4 + pending.readUIntBE(1, 3)) {
        if (pending[0] === 20) current = ap; // Finished ends the handshake-key epoch
        pending = pending.subarray(4 + pending.readUIntBE(1, 3));
      }
    }
  }
  return opened;
}

const appData = (opened: { type: number; plaintext: Buffer }[]) =>
  Buffer.concat(opened.filter((o) => o.type === ContentType.application_data).map((o) => o.plaintext)).toString();

describe('interop with OpenSSL through node:tls', () => {
  before(() => {
    certDir = mkdtempSync(join(tmpdir(), 'ironsocket-aead-'));
    const req = (name: string, newkey: string[]) =>
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          ...newkey,
          '-nodes',
          '-days',
          '1',
          '-subj',
          '/CN=localhost',
          '-keyout',
          join(certDir, `${name}.key`),
          '-out',
          join(certDir, `${name}.crt`),
        ],
        { stdio: 'ignore' },
      );
    req('ec', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256']);
    req('rsa', ['-newkey', 'rsa:2048']);
    const load = (n: string) => ({ key: readFileSync(join(certDir, `${n}.key`)), cert: readFileSync(join(certDir, `${n}.crt`)) });
    certs = { ec: load('ec'), rsa: load('rsa') };
  });
  after(() => rmSync(certDir, { recursive: true, force: true }));

  for (const suite of SUITES) {
    test(`traffic negotiated as ${suite.name} over ${suite.version} decrypts in both directions`, { timeout: 20000 }, async () => {
      const message = `ping over ${suite.name}`;
      const cap = await capture(suite, message);
      assert.equal(cap.protocol, suite.version);
      assert.equal(suiteByName(cap.cipher, cap.protocol), suite, `node reported ${cap.cipher}`);
      assert.ok(cap.keylog.hasTrafficSecrets(suite.version), 'server keylog event delivered the secrets');

      const c2s = splitRecords(cap.c2s);
      const s2c = splitRecords(cap.s2c);
      const clientHello = parseHello(Buffer.concat([c2s[0].header, c2s[0].body]));
      assert.equal(clientHello.kind, 'client_hello');
      assert.deepEqual(clientHello.random, cap.keylog.clientRandom);
      const afterCcs = (rs: RawRecord[]) => rs.slice(rs.findIndex((r) => r.header[0] === ContentType.change_cipher_spec) + 1);

      if (suite.version === 'TLSv1.3') {
        const k = cap.keylog;
        const hsProtection = (secret: Buffer | undefined) => {
          assert.ok(secret);
          const { key, iv } = tls13TrafficKeys(suite, secret);
          return new RecordProtection(suite, key, iv, 0n);
        };
        const keys = deriveDirectionKeys(suite, {
          version: 'TLSv1.3',
          clientTrafficSecret: k.clientTrafficSecret0!,
          serverTrafficSecret: k.serverTrafficSecret0!,
        });
        const prot = (rs: RawRecord[]) => rs.filter((r) => r.header[0] === ContentType.application_data);
        const fromClient = decryptFlight(prot(c2s), hsProtection(k.clientHandshakeTrafficSecret), new RecordProtection(suite, keys.rx.key, keys.rx.iv, 0n));
        const fromServer = decryptFlight(prot(s2c), hsProtection(k.serverHandshakeTrafficSecret), new RecordProtection(suite, keys.tx.key, keys.tx.iv, 0n));
        assert.equal(appData(fromClient), message);
        assert.equal(appData(fromServer), `pong: ${message}`);
        // The server's first records under the application key are NewSessionTickets (handshake type 4).
        const firstAp = fromServer.find((o) => o.phase === 'ap')!;
        assert.equal(firstAp.type, ContentType.handshake);
        assert.equal(firstAp.plaintext[0], 4);
        // The client's close_notify (warning, close_notify) is protected under the application key too.
        assert.ok(fromClient.some((o) => o.type === ContentType.alert && o.plaintext.equals(Buffer.from([1, 0]))));
      } else {
        const serverRandom = serverRandomFromServerHello(Buffer.concat([s2c[0].header, s2c[0].body]));
        assert.equal(parseHello(Buffer.concat([s2c[0].header, s2c[0].body])).kind, 'server_hello');
        const keys = deriveDirectionKeys(suite, {
          version: 'TLSv1.2',
          masterSecret: cap.keylog.masterSecret!,
          clientRandom: cap.keylog.clientRandom!,
          serverRandom,
        });
        const fromClient = decryptFlight(afterCcs(c2s), undefined, new RecordProtection(suite, keys.rx.key, keys.rx.iv, 0n));
        const fromServer = decryptFlight(afterCcs(s2c), undefined, new RecordProtection(suite, keys.tx.key, keys.tx.iv, 0n));
        // Sequence 0 is each side's Finished (handshake type 20, 12 bytes of verify_data); app data starts at 1.
        for (const flight of [fromClient, fromServer]) {
          assert.equal(flight[0].type, ContentType.handshake);
          assert.deepEqual(flight[0].plaintext.subarray(0, 4), Buffer.from([20, 0, 0, 12]));
          assert.equal(flight[1].type, ContentType.application_data);
        }
        assert.equal(appData(fromClient), message);
        assert.equal(appData(fromServer), `pong: ${message}`);
      }
      cap.keylog.wipe();
      assert.equal(cap.keylog.masterSecret ?? cap.keylog.clientTrafficSecret0, undefined);
    });
  }
});
