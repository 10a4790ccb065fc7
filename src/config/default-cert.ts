// Provides a working self-signed localhost certificate so `ironsocket run` works with zero configuration.
import { X509Certificate, createHash, createPrivateKey, generateKeyPair, randomBytes, sign, type KeyObject } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as asn1js from 'asn1js';
import {
  AlgorithmIdentifier,
  AttributeTypeAndValue,
  BasicConstraints,
  Certificate,
  ExtKeyUsage,
  Extension,
  GeneralName,
  GeneralNames,
  PublicKeyInfo,
  Time,
  TimeType,
} from 'pkijs';

export interface DefaultCertificate {
  certFile: string;
  keyFile: string;
  /** True when this call generated the certificate, false when an existing one was reused. */
  created: boolean;
}

/** Regenerate when the certificate expires within this margin. */
const RENEW_MARGIN_MS = 24 * 3600 * 1000;
const VALID_DAYS = 365;

/** Where generated state lives: $IRONSOCKET_STATE_DIR, $XDG_STATE_HOME/ironsocket, /var/lib/ironsocket (root) or ~/.local/state/ironsocket. */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.IRONSOCKET_STATE_DIR) return env.IRONSOCKET_STATE_DIR;
  if (env.XDG_STATE_HOME) return join(env.XDG_STATE_HOME, 'ironsocket');
  if (process.getuid?.() === 0) return '/var/lib/ironsocket';
  return join(homedir(), '.local', 'state', 'ironsocket');
}

/** Paths of the default certificate pair (whether or not they exist yet). */
export function defaultCertificatePaths(env: NodeJS.ProcessEnv = process.env): { certFile: string; keyFile: string } {
  const dir = join(stateDir(env), 'localhost');
  return { certFile: join(dir, 'cert.pem'), keyFile: join(dir, 'key.pem') };
}

/** Object identifiers the certificate uses (RFC 5280, RFC 5758). */
const OID = {
  commonName: '2.5.4.3',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
};

const generateKeyPairAsync = promisify(generateKeyPair);

/**
 * Returns the default self-signed certificate, generating it when missing or about to expire: an ECDSA P-256 key
 * from node:crypto, a certificate encoded by pkijs and signed by node:crypto (no `openssl` binary involved).
 */
export async function ensureDefaultCertificate(env: NodeJS.ProcessEnv = process.env): Promise<DefaultCertificate> {
  const base = stateDir(env);
  const { certFile, keyFile } = defaultCertificatePaths(env);
  try {
    await mkdir(base, { recursive: true, mode: 0o700 });
    await chmod(base, 0o700);
  } catch (err) {
    throw new Error(`cannot prepare state directory ${base} for the default certificate: ${(err as Error).message}`);
  }
  if (await isUsable(certFile, keyFile)) return { certFile, keyFile, created: false };

  // Generate the pair in a private (0700) scratch dir, then move the whole dir into place in one rename.
  const scratch = await mkdtemp(join(base, '.localhost-'));
  try {
    await writePair(scratch);
    const dir = join(base, 'localhost');
    // Every step is a rename, so a concurrent caller never sees (or deletes) half a pair: a pair already
    // in place that works wins; one that does not is moved aside whole, then ours goes in.
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await rename(scratch, dir);
        return { certFile, keyFile, created: true };
      } catch (err) {
        if (!isCode(err, 'ENOTEMPTY', 'EEXIST')) throw err;
      }
      if (await isUsable(certFile, keyFile)) return { certFile, keyFile, created: false };
      const stale = await mkdtemp(join(base, '.stale-'));
      try {
        await rename(dir, join(stale, 'localhost'));
      } catch (err) {
        if (!isCode(err, 'ENOENT')) throw err; // another caller moved it first
      } finally {
        await rm(stale, { recursive: true, force: true });
      }
    }
    throw new Error(`could not install the default certificate in ${dir}: it kept being replaced`);
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

async function isUsable(certFile: string, keyFile: string): Promise<boolean> {
  try {
    const [certPem, keyPem, keyStat] = await Promise.all([readFile(certFile, 'utf8'), readFile(keyFile), stat(keyFile)]);
    const cert = new X509Certificate(certPem);
    if (Date.parse(cert.validTo) - Date.now() < RENEW_MARGIN_MS) return false;
    try {
      if (!cert.checkPrivateKey(createPrivateKey(keyPem))) return false;
    } finally {
      keyPem.fill(0);
    }
    if ((keyStat.mode & 0o077) !== 0) await chmod(keyFile, 0o600);
    return true;
  } catch {
    return false;
  }
}

/** Writes a new pair into `dir`: key.pem (PKCS#8, 0600, its bytes zeroed once written) and cert.pem (0644). */
async function writePair(dir: string): Promise<void> {
  let certDer: Buffer;
  let keyDer: Buffer;
  try {
    const { publicKey, privateKey } = await generateKeyPairAsync('ec', { namedCurve: 'P-256' });
    certDer = buildCertificate(publicKey, privateKey, new Date());
    const check = new X509Certificate(certDer);
    if (!check.verify(publicKey) || !check.checkPrivateKey(privateKey)) throw new Error('the new certificate does not verify');
    keyDer = privateKey.export({ type: 'pkcs8', format: 'der' });
  } catch (err) {
    throw new Error(`cannot generate the default certificate: ${(err as Error).message}`);
  }
  const keyPem = pem('PRIVATE KEY', keyDer);
  try {
    // 'wx': a fresh file in the fresh scratch dir, created 0600 (or less, by the umask) before a byte is written.
    await writeFile(join(dir, 'key.pem'), keyPem, { mode: 0o600, flag: 'wx' });
  } finally {
    keyDer.fill(0);
    keyPem.fill(0);
  }
  await chmod(join(dir, 'key.pem'), 0o600);
  await writeFile(join(dir, 'cert.pem'), pem('CERTIFICATE', certDer), { mode: 0o644, flag: 'wx' });
  await chmod(join(dir, 'cert.pem'), 0o644);
}

/**
 * The DER of a self-signed X.509 v3 certificate for localhost, valid for VALID_DAYS from `now`, with what
 * `openssl req -x509` made before: CN=localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1, basicConstraints
 * critical CA:FALSE, keyUsage critical digitalSignature, extendedKeyUsage serverAuth, subjectKeyIdentifier
 * (SHA-1 of the public key, RFC 5280 4.2.1.2), ecdsa-with-SHA256. pkijs encodes; node:crypto signs.
 */
function buildCertificate(publicKey: KeyObject, privateKey: KeyObject, now: Date): Buffer {
  const cert = new Certificate();
  cert.version = 2; // v3
  const serial = randomBytes(20); // as openssl: 20 octets, RFC 5280's most
  serial[0] = (serial[0] & 0x7f) | 0x40; // positive, and no leading zero byte to strip (DER)
  cert.serialNumber = new asn1js.Integer({ valueHex: serial });
  for (const name of [cert.subject, cert.issuer]) {
    name.typesAndValues.push(new AttributeTypeAndValue({ type: OID.commonName, value: new asn1js.Utf8String({ value: 'localhost' }) }));
  }
  const notBefore = Math.floor(now.getTime() / 1000) * 1000; // whole seconds: DER times carry no fraction
  cert.notBefore = time(new Date(notBefore));
  cert.notAfter = time(new Date(notBefore + VALID_DAYS * 86_400_000));
  cert.subjectPublicKeyInfo = PublicKeyInfo.fromBER(publicKey.export({ type: 'spki', format: 'der' }));
  const ipv6Loopback = new Uint8Array(16);
  ipv6Loopback[15] = 1;
  const names = new GeneralNames({
    names: [
      new GeneralName({ type: 2, value: 'localhost' }),
      new GeneralName({ type: 7, value: new asn1js.OctetString({ valueHex: Uint8Array.of(127, 0, 0, 1) }) }),
      new GeneralName({ type: 7, value: new asn1js.OctetString({ valueHex: ipv6Loopback }) }),
    ],
  });
  const keyId = createHash('sha1').update(cert.subjectPublicKeyInfo.subjectPublicKey.valueBlock.valueHexView).digest();
  cert.extensions = [
    extension(OID.subjectAltName, false, names.toSchema()),
    extension(OID.basicConstraints, true, new BasicConstraints({ cA: false }).toSchema()),
    // digitalSignature is bit 0, the first bit of the string: one byte 0x80 with 7 unused bits.
    extension(OID.keyUsage, true, new asn1js.BitString({ valueHex: Uint8Array.of(0x80), unusedBits: 7 })),
    extension(OID.extKeyUsage, false, new ExtKeyUsage({ keyPurposes: [OID.serverAuth] }).toSchema()),
    extension(OID.subjectKeyIdentifier, false, new asn1js.OctetString({ valueHex: keyId })),
  ];
  // ecdsa-with-SHA256 has no parameters (RFC 5758 3.2); node:crypto's ECDSA signature is DER, as X.509 wants.
  cert.signature = new AlgorithmIdentifier({ algorithmId: OID.ecdsaWithSha256 });
  cert.signatureAlgorithm = new AlgorithmIdentifier({ algorithmId: OID.ecdsaWithSha256 });
  cert.tbsView = new Uint8Array(cert.encodeTBS().toBER());
  cert.signatureValue = new asn1js.BitString({ valueHex: sign('sha256', cert.tbsView, privateKey) });
  return Buffer.from(cert.toSchema().toBER());
}

function extension(extnID: string, critical: boolean, value: { toBER(sizeOnly?: boolean): ArrayBuffer }): Extension {
  return new Extension({ extnID, critical, extnValue: value.toBER(false) });
}

/** UTCTime through 2049, GeneralizedTime from 2050 on (RFC 5280 4.1.2.5). */
function time(value: Date): Time {
  return new Time({ type: value.getUTCFullYear() < 2050 ? TimeType.UTCTime : TimeType.GeneralizedTime, value });
}

const BASE64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/** PEM (64-column base64) of `der`, built straight into a Buffer: no string ever holds the bytes, so fill(0) erases them. */
function pem(label: string, der: Uint8Array): Buffer {
  const head = `-----BEGIN ${label}-----\n`;
  const tail = `-----END ${label}-----\n`;
  const chars = Math.ceil(der.length / 3) * 4;
  const out = Buffer.alloc(head.length + chars + Math.ceil(chars / 64) + tail.length);
  let o = out.write(head, 'latin1');
  for (let i = 0; i < der.length; i += 3) {
    const more = der.length - i; // 1, 2, or 3 and up
    const n = (der[i] << 16) | ((more > 1 ? der[i + 1] : 0) << 8) | (more > 2 ? der[i + 2] : 0);
    out[o++] = BASE64.charCodeAt(n >>> 18);
    out[o++] = BASE64.charCodeAt((n >>> 12) & 63);
    out[o++] = more > 1 ? BASE64.charCodeAt((n >>> 6) & 63) : 0x3d; // '='
    out[o++] = more > 2 ? BASE64.charCodeAt(n & 63) : 0x3d;
    if ((i / 3 + 1) % 16 === 0 || more <= 3) out[o++] = 0x0a;
  }
  out.write(tail, o, 'latin1');
  return out;
}

function isCode(err: unknown, ...codes: string[]): boolean {
  return typeof err === 'object' && err !== null && codes.includes(String((err as { code?: unknown }).code));
}
