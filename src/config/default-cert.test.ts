// Checks that the zero-config certificate is generated safely, is valid for localhost and is reused.
import assert from 'node:assert/strict';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ensureDefaultCertificate, stateDir } from './default-cert.js';

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

  it('explains a missing openssl binary', async () => {
    const saved = process.env.PATH;
    process.env.PATH = join(dir, 'empty-path');
    try {
      await assert.rejects(ensureDefaultCertificate({ IRONSOCKET_STATE_DIR: join(dir, 'e') }), /`openssl` command was not found/);
    } finally {
      process.env.PATH = saved;
    }
  });
});

describe('stateDir', () => {
  it('honours IRONSOCKET_STATE_DIR, then XDG_STATE_HOME', () => {
    assert.equal(stateDir({ IRONSOCKET_STATE_DIR: '/x', XDG_STATE_HOME: '/y' }), '/x');
    assert.equal(stateDir({ XDG_STATE_HOME: '/y' }), '/y/ironsocket');
  });
});
