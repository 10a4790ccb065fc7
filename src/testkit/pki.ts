// Test support: a throwaway CA and the certificates tests need (server names, ECDSA/RSA, client certs), made with openssl.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface Pair {
  certFile: string;
  keyFile: string;
}

export interface Ca extends Pair {
  dir: string;
}

function newKey(kind: 'ec' | 'rsa'): string[] {
  return kind === 'ec' ? ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'] : ['-newkey', 'rsa:2048'];
}

/** A self-signed CA in `dir`. */
export async function makeCa(dir: string, name = 'Test CA'): Promise<Ca> {
  const certFile = path.join(dir, `${name.replace(/\W/g, '_')}-ca.pem`);
  const keyFile = path.join(dir, `${name.replace(/\W/g, '_')}-ca-key.pem`);
  await run('openssl', ['req', '-x509', ...newKey('ec'), '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', `/CN=${name}`]);
  return { dir, certFile, keyFile };
}

export interface IssueOptions {
  /** Subject CN. */
  cn: string;
  /** DNS subjectAltNames (none: the certificate has only its CN). */
  dns?: string[];
  kind?: 'ec' | 'rsa';
  /** A client certificate (extendedKeyUsage clientAuth) instead of a server one. */
  client?: boolean;
  /** Extra subject RDNs, e.g. "/O=Acme". */
  subjectExtra?: string;
  /** Signed by this CA; without, self-signed. */
  ca?: Ca;
}

let serial = 1;

/** Issues a certificate (chain file: the leaf, then the CA when there is one) and its key into `dir`. */
export async function issue(dir: string, o: IssueOptions): Promise<Pair> {
  const base = path.join(dir, `${o.cn.replace(/\W/g, '_')}-${o.kind ?? 'ec'}-${serial++}`);
  const keyFile = `${base}-key.pem`;
  const certFile = `${base}.pem`;
  const ext = `${base}.ext`;
  const lines = [o.client ? 'extendedKeyUsage=clientAuth' : 'extendedKeyUsage=serverAuth', 'basicConstraints=CA:FALSE'];
  if (o.dns?.length) lines.push(`subjectAltName=${o.dns.map((d) => `DNS:${d}`).join(',')}`);
  fs.writeFileSync(ext, lines.join('\n') + '\n');
  const subj = `/CN=${o.cn}${o.subjectExtra ?? ''}`;
  if (!o.ca) {
    const addext = lines.flatMap((l) => ['-addext', l]);
    await run('openssl', ['req', '-x509', ...newKey(o.kind ?? 'ec'), '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', subj, ...addext]);
    return { certFile, keyFile };
  }
  const csr = `${base}.csr`;
  await run('openssl', ['req', '-new', ...newKey(o.kind ?? 'ec'), '-nodes', '-keyout', keyFile, '-out', csr, '-subj', subj]);
  const signed = `${base}.leaf.pem`;
  await run('openssl', [
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    o.ca.certFile,
    '-CAkey',
    o.ca.keyFile,
    '-set_serial',
    String(serial++),
    '-days',
    '2',
    '-extfile',
    ext,
    '-out',
    signed,
  ]);
  fs.writeFileSync(certFile, fs.readFileSync(signed, 'utf8') + fs.readFileSync(o.ca.certFile, 'utf8'));
  return { certFile, keyFile };
}

export interface CrlOptions {
  /** Certificates (chain files from `issue`; the first certificate is the one revoked) listed as revoked. */
  revoked?: Pair[];
  /** PEM (default) or DER. */
  format?: 'pem' | 'der';
  /** A CRL whose nextUpdate has passed (lastUpdate two days ago, nextUpdate yesterday). */
  expired?: boolean;
  /** The file to write; default: a new name in the CA's directory. */
  out?: string;
}

let crlSerial = 1;

/** Issues a CRL of `ca` with `openssl ca -gencrl` (a minimal CA database of its own in a temp directory). */
export async function makeCrl(ca: Ca, o: CrlOptions = {}): Promise<string> {
  const db = fs.mkdtempSync(path.join(ca.dir, 'crl-db-'));
  const conf = path.join(db, 'ca.cnf');
  fs.writeFileSync(path.join(db, 'index.txt'), '');
  fs.writeFileSync(path.join(db, 'crlnumber'), `${String(crlSerial++).padStart(2, '0')}\n`);
  fs.writeFileSync(conf, `[ca]\ndefault_ca = d\n[d]\ndatabase = ${db}/index.txt\ncrlnumber = ${db}/crlnumber\ndefault_md = sha256\ndefault_crl_days = 1\n`);
  const base = ['ca', '-config', conf, '-keyfile', ca.keyFile, '-cert', ca.certFile];
  for (const r of o.revoked ?? []) await run('openssl', [...base, '-revoke', r.certFile]);
  const stamp = (d: Date) => d.toISOString().replace(/[-:T]/g, '').slice(0, 14) + 'Z';
  const day = 86_400_000;
  const dates = o.expired ? ['-crl_lastupdate', stamp(new Date(Date.now() - 2 * day)), '-crl_nextupdate', stamp(new Date(Date.now() - day))] : [];
  const pem = path.join(db, 'crl.pem');
  await run('openssl', [...base, '-gencrl', ...dates, '-out', pem]);
  const out = o.out ?? path.join(ca.dir, `crl-${crlSerial}.${o.format ?? 'pem'}`);
  if (o.format === 'der') await run('openssl', ['crl', '-in', pem, '-outform', 'DER', '-out', out]);
  else fs.copyFileSync(pem, out);
  fs.rmSync(db, { recursive: true, force: true });
  return out;
}
