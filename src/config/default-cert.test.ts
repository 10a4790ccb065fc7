// Checks that the zero-config certificate is generated safely, is valid for localhost and is reused.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate, createHash, createPrivateKey } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect, createServer } from 'node:tls';
import { promisify } from 'node:util';
import { ensureDefaultCertificate, stateDir } from './default-cert.js';

const execFileAsync = promisify(execFile);

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ironsocket-cert-'));
});
after(() => rm(dir, { recursive: true, force: true }));

describe('ensureDefaultCertificate', () => {
  it('generates a P-256 localhost certificate with a 0600 key in a 0700 directory', async () => {
    const env = { IRONSOCKET_STATE_DIR: join(dir, 'a') };
    const r = await ensureDefaultCertificate(env);
    assert.equal(r.created, true);
    assert.equal((await stat(r.keyFile)).mode & 0o777, 0o600);
    assert.equal((await stat(join(dir, 'a'))).mode & 0o777, 0o700);
    const cert = new X509Certificate(await readFile(r.certFile));
    assert.match(cert.subject, /CN=localhost/);
    assert.equal(cert.subjectAltName, 'DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1');
    assert.equal(cert.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    assert.ok(cert.checkPrivateKey(createPrivateKey(await readFile(r.keyFile))));
    const days = (Date.parse(cert.validTo) - Date.now()) / 86_400_000;
    assert.ok(days > 364 && days <= 366, `valid for ${days} days`);
    assert.equal(cert.ca, false);
  });

  it('reuses the certificate on the second call', async () => {
    const env = { IRONSOCKET_STATE_DIR: join(dir, 'b') };
    const first = await ensureDefaultCertificate(env);
    const pem = await readFile(first.certFile, 'utf8');
    const second = await ensureDefaultCertificate(env);
    assert.equal(second.created, false);
    assert.equal(second.certFile, first.certFile);
    assert.equal(await readFile(second.certFile, 'utf8'), pem);
  });

  it('regenerates a certificate that is unreadable or does not match its key', async () => {
    const env = { IRONSOCKET_STATE_DIR: join(dir, 'c') };
    const first = await ensureDefaultCertificate(env);
    await writeFile(first.certFile, 'not a certificate');
    const second = await ensureDefaultCertificate(env);
    assert.equal(second.created, true);
    assert.doesNotThrow(() => new X509Certificate(readFileSync(second.certFile)));
  });

  it('leaves one matching pair when called concurrently', async () => {
    const env = { IRONSOCKET_STATE_DIR: join(dir, 'd') };
    const results = await Promise.all([ensureDefaultCertificate(env), ensureDefaultCertificate(env), ensureDefaultCertificate(env)]);
    const cert = new X509Certificate(await readFile(results[0].certFile));
    assert.ok(cert.checkPrivateKey(createPrivateKey(await readFile(results[0].keyFile))));
  });

  it('leaves one matching pair when many callers replace a broken one at once, and no scratch dirs', async () => {
    const env = { IRONSOCKET_STATE_DIR: join(dir, 'f') };
    for (let round = 0; round < 3; round++) {
      const first = await ensureDefaultCertificate(env);
      await writeFile(first.certFile, 'not a certificate');
      const results = await Promise.all(Array.from({ length: 8 }, () => ensureDefaultCertificate(env)));
      assert.ok(
        results.some((r) => r.created),
        'someone regenerated it',
      );
      const cert = new X509Certificate(await readFile(first.certFile));
      assert.ok(cert.checkPrivateKey(createPrivateKey(await readFile(first.keyFile))), `round ${round}: the pair in place matches`);
    }
    assert.deepEqual(
      (await readdir(join(dir, 'f'))).filter((n) => n.startsWith('.')),
      [],
      'scratch and stale dirs are gone',
    );
  });

  it('makes a certificate a TLS client trusts for localhost in a process whose PATH has no openssl', async () => {
    const state = join(dir, 'e');
    const emptyPath = join(dir, 'empty-path');
    await mkdir(emptyPath);
    // A child process, so nothing of this process's PATH (or anything already loaded) can help.
    const script = 'const m = await import(process.argv[1]); process.stdout.write(JSON.stringify(await m.ensureDefaultCertificate()));';
    const { stdout } = await execFileAsync(process.execPath, ['--input-type=module', '-e', script, new URL('./default-cert.js', import.meta.url).href], {
      env: { PATH: emptyPath, IRONSOCKET_STATE_DIR: state },
    });
    const r = JSON.parse(stdout) as { certFile: string; keyFile: string; created: boolean };
    assert.equal(r.created, true);
    assert.equal(r.certFile, join(state, 'localhost', 'cert.pem'));
    assert.equal((await stat(r.keyFile)).mode & 0o777, 0o600);
    assert.equal((await stat(state)).mode & 0o777, 0o700);
    const certPem = await readFile(r.certFile);
    const keyPem = await readFile(r.keyFile);
    assert.match(keyPem.toString(), /^-----BEGIN PRIVATE KEY-----\n/);

    const cert = new X509Certificate(certPem);
    assert.equal(cert.subject, 'CN=localhost');
    assert.equal(cert.issuer, 'CN=localhost');
    assert.equal(cert.subjectAltName, 'DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1');
    assert.equal(cert.publicKey.asymmetricKeyType, 'ec');
    assert.equal(cert.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    assert.ok(cert.checkPrivateKey(createPrivateKey(keyPem)), 'the key is the certificate’s');
    assert.ok(cert.verify(cert.publicKey), 'self-signed');
    assert.ok(Math.abs(Date.parse(cert.validFrom) - Date.now()) < 60_000, `valid from ${cert.validFrom}`);
    assert.equal(Date.parse(cert.validTo) - Date.parse(cert.validFrom), 365 * 86_400_000);
    assert.equal(cert.ca, false);
    assert.deepEqual(cert.keyUsage, ['1.3.6.1.5.5.7.3.1'], 'extendedKeyUsage serverAuth');
    // The extensions' DER as `openssl req -x509` wrote them: OID, critical flag, value.
    const point = cert.publicKey.export({ type: 'spki', format: 'der' }).subarray(-65);
    const extensions = {
      'basicConstraints critical CA:FALSE': '0603551d130101ff04023000',
      'keyUsage critical digitalSignature': '0603551d0f0101ff040403020780',
      'extendedKeyUsage serverAuth': '0603551d25040c300a06082b06010505070301',
      'subjectKeyIdentifier SHA-1 of the key': '0603551d0e04160414' + createHash('sha1').update(point).digest('hex'),
    };
    for (const [what, hex] of Object.entries(extensions)) assert.ok(cert.raw.includes(Buffer.from(hex, 'hex')), what);

    const server = createServer({ cert: certPem, key: keyPem }, (s) => s.end('served'));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    try {
      const { port } = server.address() as AddressInfo;
      for (const options of [{ servername: 'localhost' }, {}]) {
        const socket = connect({ host: '127.0.0.1', port, ca: certPem, ...options });
        await once(socket, 'secureConnect');
        assert.equal(socket.authorized, true, `trusted for ${options.servername ?? '127.0.0.1'}`);
        let got = '';
        for await (const chunk of socket) got += String(chunk);
        assert.equal(got, 'served');
      }
    } finally {
      server.close();
    }
  });
});

describe('stateDir', () => {
  it('honours IRONSOCKET_STATE_DIR, then XDG_STATE_HOME', () => {
    assert.equal(stateDir({ IRONSOCKET_STATE_DIR: '/x', XDG_STATE_HOME: '/y' }), '/x');
    assert.equal(stateDir({ XDG_STATE_HOME: '/y' }), '/y/ironsocket');
  });
});
