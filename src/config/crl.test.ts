// Checks client_auth.crl before anything serves it: the config key, reading PEM and DER CRLs, matching them to the CA bundle, and `ironsocket check`.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { issue, makeCa, makeCrl, type Ca, type Pair } from '../testkit/pki.js';
import { CLI, tempDir } from '../testkit/proxy-process.js';
import { prepareListener, ListenerSetupError } from '../edge/listener-setup.js';
import type { ListenerConfig } from '../core/types.js';
import { caCertificates, checkCrls, parseCrlFile, readCrlFile } from './crl.js';
import { resolveConfig } from './load.js';
import { ConfigError } from './schema.js';

/** The TLS settings every listener here is prepared with. */
const BASE = { minVersion: 'TLSv1.2' } as const;

const run = promisify(execFile);

describe('client_auth.crl', () => {
  let dir: string;
  let ca: Ca;
  let other: Ca;
  let site: Pair;
  let bob: Pair;
  let pem: string;
  let der: string;
  let expired: string;
  let foreign: string;

  before(async () => {
    dir = tempDir('crl-config');
    [ca, other] = await Promise.all([makeCa(dir, 'Clients CA'), makeCa(dir, 'Other CA')]);
    site = await issue(dir, { cn: 'site.test', dns: ['site.test'] });
    bob = await issue(dir, { cn: 'bob', client: true, ca });
    pem = await makeCrl(ca, { revoked: [bob] });
    der = await makeCrl(ca, { revoked: [bob], format: 'der' });
    expired = await makeCrl(ca, { expired: true });
    foreign = await makeCrl(other);
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const caPem = () => fs.readFileSync(ca.certFile);

  it('reads a PEM CRL, a DER CRL and a PEM file of several CRLs alike', () => {
    const [fromPem] = parseCrlFile(fs.readFileSync(pem));
    const [fromDer] = parseCrlFile(fs.readFileSync(der));
    assert.equal(fromPem!.issuer, 'CN=Clients CA');
    assert.equal(fromPem!.revoked, 1);
    assert.deepEqual([fromDer!.issuer, fromDer!.revoked], ['CN=Clients CA', 1]);
    const body = fromDer!.pem.replace(/-----(BEGIN|END) X509 CRL-----|\n/g, '');
    assert.deepEqual(Buffer.from(body, 'base64'), fs.readFileSync(der), 'DER becomes a PEM block of the same bytes');
    assert.ok(
      fromDer!.pem.split('\n').every((line) => line.length <= 64),
      'in lines of 64',
    );
    const two = parseCrlFile(Buffer.concat([fs.readFileSync(pem), fs.readFileSync(foreign)]));
    assert.deepEqual(
      two.map((c) => c.issuer),
      ['CN=Clients CA', 'CN=Other CA'],
    );
  });

  it('finds nothing wrong with a current CRL of the configured CA', async () => {
    for (const f of [pem, der]) {
      const r = await readCrlFile(f, caPem());
      assert.deepEqual([r.crls.length, r.problems, r.warnings], [1, [], []], f);
    }
  });

  it('refuses an unreadable file and one that is not a CRL', async () => {
    const garbage = path.join(dir, 'garbage.crl');
    fs.writeFileSync(garbage, Buffer.from([0x30, 0x82, 0x01]));
    assert.match((await readCrlFile(path.join(dir, 'nope.crl'), caPem())).problems.join(), /client_auth\.crl: cannot read ".*nope\.crl": no such file/);
    assert.match((await readCrlFile(ca.certFile, caPem())).problems.join(), /not a CRL \(PEM "X509 CRL" or DER\): holds no "X509 CRL" PEM block/);
    assert.match((await readCrlFile(garbage, caPem())).problems.join(), /garbage\.crl": not a CRL/);
  });

  it('refuses a CRL of another CA, one whose signature does not verify, and a CA left without a CRL', async () => {
    const r = await readCrlFile(foreign, caPem());
    assert.match(r.problems[0]!, /the CRL \(issuer CN=Other CA\) is not issued by a CA of client_auth\.ca/);
    assert.match(r.problems[1]!, /no CRL from CA "CN=Clients CA" of client_auth\.ca: every certificate it issued would be refused/);
    const [good] = parseCrlFile(fs.readFileSync(pem));
    const forged = { ...good!, signature: Buffer.from(good!.signature) };
    forged.signature[forged.signature.length - 1]! ^= 1;
    assert.match(checkCrls([forged], caCertificates(caPem())).problems.join(), /its signature does not verify with the key of its CA/);
    const bundle = Buffer.concat([caPem(), fs.readFileSync(other.certFile)]);
    assert.deepEqual(checkCrls([good!], caCertificates(bundle)).problems, [
      'no CRL from CA "CN=Other CA" of client_auth.ca: every certificate it issued would be refused (unable to get certificate CRL)',
    ]);
  });

  it('warns about a CRL past its nextUpdate, and also about one not valid yet', async () => {
    const r = await readCrlFile(expired, caPem());
    assert.deepEqual(r.problems, []);
    assert.match(r.warnings.join(), /expired on .* \(nextUpdate\): every certificate of its CA is refused until a fresh CRL is loaded/);
    const soon = await readCrlFile(pem, caPem(), Date.now() - 3_600_000);
    assert.match(soon.warnings.join(), /not valid before .* \(thisUpdate\)/);
  });

  it('takes crl beside ca and verify, resolved from the config file directory, and refuses an empty or non-string one', async () => {
    const write = (name: string, crl: string) => {
      const f = path.join(dir, name);
      fs.writeFileSync(
        f,
        `[[listener]]\nlisten = "127.0.0.1:1"\nbackend = "127.0.0.1:2"\ncert = ${JSON.stringify(site.certFile)}\nkey = ${JSON.stringify(site.keyFile)}\nclient_auth = { ca = "ca.pem", verify = "optional", crl = ${crl} }\n`,
      );
      return f;
    };
    const r = await resolveConfig({ file: write('ok.toml', '"revoked.crl"'), flags: {}, generateDefaultCert: false });
    assert.deepEqual(r.config.listeners[0]!.clientAuth, { caFile: path.join(dir, 'ca.pem'), required: false, crlFile: path.join(dir, 'revoked.crl') });
    for (const [crl, want] of [
      ['""', /client_auth\.crl: expected a non-empty file path/],
      ['5', /client_auth\.crl: expected a file path/],
    ] as const) {
      const e = await resolveConfig({ file: write('bad.toml', crl), flags: {}, generateDefaultCert: false }).then(
        () => assert.fail('expected a ConfigError'),
        (err: unknown) => err,
      );
      assert.ok(e instanceof ConfigError);
      assert.match(e.problems.join('\n'), want);
    }
  });

  it('stops a listener from being set up with a CRL of another CA, and warns when its CRL has expired', async () => {
    const l = (crlFile: string): ListenerConfig => ({
      name: 'm',
      listen: { host: '127.0.0.1', port: 0 },
      backends: [{ host: '127.0.0.1', port: 1 }],
      certs: [{ certFile: site.certFile, keyFile: site.keyFile, names: [], default: true }],
      alpn: [],
      routes: [],
      clientAuth: { caFile: ca.certFile, required: true, crlFile },
      proxyProtocol: 'off',
      transparent: false,
    });
    await assert.rejects(
      prepareListener(l(foreign), BASE),
      (e: Error) => e instanceof ListenerSetupError && /listener "m": client_auth\.crl: .*not issued by a CA/.test(e.message),
    );
    const warned: string[] = [];
    const served = await prepareListener(l(expired), BASE, (m) => warned.push(m));
    assert.equal(served.crl?.length, 1);
    assert.match(warned.join(), /listener "m": client_auth\.crl: .*expired on/);
    const fromDer = await prepareListener(l(der), BASE);
    assert.match(fromDer.crl![0]!, /^-----BEGIN X509 CRL-----\n/);
  });

  it('check reports a bad CRL file (exit 1) and warns about an expired one (exit 0)', async () => {
    const config = (crl: string) => {
      const f = path.join(dir, 'check.toml');
      fs.writeFileSync(
        f,
        `[[listener]]\nname = "db"\nlisten = "127.0.0.1:1"\nbackend = "127.0.0.1:2"\ncert = ${JSON.stringify(site.certFile)}\nkey = ${JSON.stringify(site.keyFile)}\nclient_auth = { ca = ${JSON.stringify(ca.certFile)}, crl = ${JSON.stringify(crl)} }\n`,
      );
      return f;
    };
    const fails = async (crl: string) =>
      run(process.execPath, [CLI, 'check', '--config', config(crl)]).then(
        () => assert.fail(`check passed with ${crl}`),
        (e: { code: number; stderr: string }) => e,
      );
    const notCrl = await fails(site.certFile);
    assert.equal(notCrl.code, 1);
    assert.match(notCrl.stderr, /client_auth\.crl: ".*" ?: ?not a CRL/);
    assert.match((await fails(path.join(dir, 'missing.crl'))).stderr, /client_auth\.crl: cannot read ".*missing\.crl": no such file/);
    assert.match((await fails(foreign)).stderr, /is not issued by a CA of client_auth\.ca/);
    const old = await run(process.execPath, [CLI, 'check', '--config', config(expired)]);
    assert.match(old.stdout, /^config OK\n(?:(?:limits|idle timeout): .*\n)*warning: .*client_auth\.crl: .*expired on/);
    const ok = await run(process.execPath, [CLI, 'check', '--config', config(der)]);
    assert.equal(ok.stdout.replace(/^(?:limits|idle timeout): .*\n/gm, ''), 'config OK\n'); // check also prints the limits and idle policy
  });
});
