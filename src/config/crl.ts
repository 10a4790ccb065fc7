// Reads a client-certificate revocation list file (PEM, one or more CRLs, or DER) into the PEM blocks OpenSSL loads, and checks it against the CA bundle.
import { X509Certificate, createPublicKey, verify } from 'node:crypto';
import { readFile } from 'node:fs/promises';

/** One CRL as far as checking it needs: its DER, issuer name (DER and text), dates and signature. */
export interface Crl {
  /** PEM text of this one CRL (node:tls loads only the first CRL of a buffer, so each goes on its own). */
  pem: string;
  issuerDer: Buffer;
  issuer: string;
  thisUpdate: Date;
  nextUpdate?: Date;
  revoked: number;
  tbs: Buffer;
  sigAlg: string;
  signature: Buffer;
}

/** What reading and checking a CRL file found: `problems` refuse it; `warnings` are said and it is served. */
export interface CrlReport {
  crls: Crl[];
  problems: string[];
  warnings: string[];
}

interface Tlv {
  tag: number;
  /** The whole element (tag, length, value). */
  all: Buffer;
  value: Buffer;
}

/** One DER element at `at`; throws on a truncated or indefinite-length encoding. */
function tlv(buf: Buffer, at = 0): Tlv & { end: number } {
  if (at + 2 > buf.length) throw new Error('truncated DER');
  const tag = buf[at]!;
  let len = buf[at + 1]!;
  let head = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || at + 2 + n > buf.length) throw new Error('bad DER length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[at + 2 + i]!;
    head += n;
  }
  const end = at + head + len;
  if (end > buf.length) throw new Error('truncated DER');
  return { tag, all: buf.subarray(at, end), value: buf.subarray(at + head, end), end };
}

/** The elements inside a constructed element's value. */
function children(value: Buffer): Tlv[] {
  const out: Tlv[] = [];
  for (let at = 0; at < value.length;) {
    const t = tlv(value, at);
    out.push(t);
    at = t.end;
  }
  return out;
}

function oid(value: Buffer): string {
  const parts = [Math.floor(value[0]! / 40), value[0]! % 40];
  let n = 0;
  for (const b of value.subarray(1)) {
    n = n * 128 + (b & 0x7f);
    if (!(b & 0x80)) {
      parts.push(n);
      n = 0;
    }
  }
  return parts.join('.');
}

function time(t: Tlv): Date {
  const s = t.value.toString('latin1');
  const m = /^(\d{2,4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s);
  if (!m || (t.tag === 0x17) !== (m[1]!.length === 2)) throw new Error(`bad time ${JSON.stringify(s)}`);
  const y = t.tag === 0x17 ? (Number(m[1]) < 50 ? 2000 : 1900) + Number(m[1]) : Number(m[1]);
  return new Date(Date.UTC(y, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
}

const NAME_KEYS: Record<string, string> = { '2.5.4.3': 'CN', '2.5.4.6': 'C', '2.5.4.7': 'L', '2.5.4.8': 'ST', '2.5.4.10': 'O', '2.5.4.11': 'OU' };

/** A Name as one line, "CN=.., O=.." (control characters become "?"). */
function nameText(name: Tlv): string {
  return children(name.value)
    .flatMap((rdn) => children(rdn.value))
    .map((atv) => {
      const [type, val] = children(atv.value);
      return `${NAME_KEYS[oid(type!.value)] ?? oid(type!.value)}=${val!.value.toString('utf8')}`;
    })
    .join(', ')
    .replace(/[\x00-\x1f\x7f]/g, '?');
}

/** Parses one DER CRL (RFC 5280 §5.1). */
export function parseCrl(der: Buffer): Crl {
  const outer = tlv(der);
  if (outer.tag !== 0x30 || outer.end !== der.length) throw new Error('not a DER SEQUENCE');
  const [tbs, alg, sig] = children(outer.value);
  if (!tbs || !alg || !sig || tbs.tag !== 0x30 || alg.tag !== 0x30 || sig.tag !== 0x03) throw new Error('not a CertificateList');
  const f = children(tbs.value);
  let i = f[0]?.tag === 0x02 ? 1 : 0; // version
  const [, issuer, thisUpdate] = [f[i++], f[i++], f[i++]];
  if (!issuer || issuer.tag !== 0x30 || !thisUpdate) throw new Error('not a TBSCertList');
  const next = f[i] && (f[i]!.tag === 0x17 || f[i]!.tag === 0x18) ? f[i++] : undefined;
  const revoked = f[i]?.tag === 0x30 ? children(f[i]!.value).length : 0;
  const b64 = der.toString('base64').replace(/.{64}/g, '$&\n');
  return {
    pem: `-----BEGIN X509 CRL-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END X509 CRL-----\n`,
    issuerDer: Buffer.from(issuer.all),
    issuer: nameText(issuer),
    thisUpdate: time(thisUpdate),
    nextUpdate: next ? time(next) : undefined,
    revoked,
    tbs: Buffer.from(tbs.all),
    sigAlg: oid(children(alg.value)[0]!.value),
    signature: Buffer.from(sig.value.subarray(1)),
  };
}

/** The CRLs in a file's bytes: PEM (every "X509 CRL" block) or one DER CRL. Throws when it holds none. */
export function parseCrlFile(bytes: Buffer): Crl[] {
  const text = bytes.toString('latin1');
  if (text.includes('-----BEGIN')) {
    const blocks = [...text.matchAll(/-----BEGIN X509 CRL-----([\s\S]+?)-----END X509 CRL-----/g)];
    if (blocks.length === 0) throw new Error('holds no "X509 CRL" PEM block');
    return blocks.map((b, k) => {
      try {
        return parseCrl(Buffer.from(b[1]!.replace(/\s+/g, ''), 'base64'));
      } catch (e) {
        throw new Error(`CRL ${k + 1}: ${(e as Error).message}`);
      }
    });
  }
  return [parseCrl(bytes)];
}

/** Hashes by signature algorithm OID; null: the key type fixes it (EdDSA). */
const SIG_HASH: Record<string, string | null> = {
  '1.2.840.10045.4.1': 'sha1',
  '1.2.840.10045.4.3.1': 'sha224',
  '1.2.840.10045.4.3.2': 'sha256',
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.10045.4.3.4': 'sha512',
  '1.2.840.113549.1.1.5': 'sha1',
  '1.2.840.113549.1.1.14': 'sha224',
  '1.2.840.113549.1.1.11': 'sha256',
  '1.2.840.113549.1.1.12': 'sha384',
  '1.2.840.113549.1.1.13': 'sha512',
  '1.3.101.112': null,
  '1.3.101.113': null,
};

/** The subject Name (DER) of a certificate. */
function subjectDer(cert: X509Certificate): Buffer {
  const [tbs] = children(tlv(cert.raw).value);
  const f = children(tbs!.value);
  const at = f[0]!.tag === 0xa0 ? 1 : 0; // [0] version
  return Buffer.from(f[at + 4]!.all); // serial, signature, issuer, validity, subject
}

/** The CA certificates of a PEM bundle (unparseable blocks are checkCaFile's to report). */
export function caCertificates(pem: Buffer): X509Certificate[] {
  const blocks = pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return blocks.flatMap((b) => {
    try {
      return [new X509Certificate(b)];
    } catch {
      return [];
    }
  });
}

/**
 * Checks CRLs against the CA bundle as OpenSSL will use them (every certificate of a client's chain is checked,
 * X509_V_FLAG_CRL_CHECK_ALL): each CRL must be issued and signed by a CA of the bundle, and each CA of the bundle
 * needs a CRL, else every certificate it issued is refused. A CRL past its nextUpdate (or before its thisUpdate)
 * is a warning: OpenSSL then refuses every certificate of that CA (certificate_expired) until a fresh one is loaded.
 */
export function checkCrls(crls: Crl[], cas: X509Certificate[], now = Date.now()): { problems: string[]; warnings: string[] } {
  const problems: string[] = [];
  const warnings: string[] = [];
  const subjects = cas.map(subjectDer);
  for (const [k, c] of crls.entries()) {
    const which = crls.length > 1 ? `CRL ${k + 1} (issuer ${c.issuer})` : `the CRL (issuer ${c.issuer})`;
    const ca = cas.filter((_, j) => subjects[j]!.equals(c.issuerDer));
    if (ca.length === 0) {
      problems.push(`${which} is not issued by a CA of client_auth.ca`);
      continue;
    }
    const hash = SIG_HASH[c.sigAlg];
    if (hash !== undefined && !ca.some((a) => verifies(hash, c, a)))
      problems.push(`${which}: its signature does not verify with the key of its CA in client_auth.ca`);
    if (c.nextUpdate && c.nextUpdate.getTime() < now)
      warnings.push(`${which} expired on ${c.nextUpdate.toISOString()} (nextUpdate): every certificate of its CA is refused until a fresh CRL is loaded`);
    if (c.thisUpdate.getTime() > now)
      warnings.push(`${which} is not valid before ${c.thisUpdate.toISOString()} (thisUpdate): every certificate of its CA is refused until then`);
  }
  for (const [j, a] of cas.entries()) {
    if (!crls.some((c) => c.issuerDer.equals(subjects[j]!)))
      problems.push(
        `no CRL from CA "${a.subject.replace(/\n/g, ', ')}" of client_auth.ca: every certificate it issued would be refused (unable to get certificate CRL)`,
      );
  }
  return { problems, warnings };
}

function verifies(hash: string | null, c: Crl, ca: X509Certificate): boolean {
  try {
    return verify(hash, c.tbs, createPublicKey(ca.publicKey.export({ format: 'pem', type: 'spki' })), c.signature);
  } catch {
    return false;
  }
}

/** Reads `crlFile` and checks it against the CA bundle `caFile`; messages are prefixed "client_auth.crl: ". */
export async function readCrlFile(crlFile: string, ca: Buffer, now = Date.now()): Promise<CrlReport> {
  const at = `client_auth.crl: ${JSON.stringify(crlFile)}`;
  let bytes: Buffer;
  try {
    bytes = await readFile(crlFile);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.message;
    return { crls: [], problems: [`client_auth.crl: cannot read ${JSON.stringify(crlFile)}: ${why}`], warnings: [] };
  }
  let crls: Crl[];
  try {
    crls = parseCrlFile(bytes);
  } catch (e) {
    return { crls: [], problems: [`${at}: not a CRL (PEM "X509 CRL" or DER): ${(e as Error).message}`], warnings: [] };
  }
  const r = checkCrls(crls, caCertificates(ca), now);
  return { crls, problems: r.problems.map((p) => `${at}: ${p}`), warnings: r.warnings.map((w) => `${at}: ${w}`) };
}

/** `ironsocket check`'s look at client_auth.crl: against the CA bundle when that reads (checkCaFile reports it when not). */
export async function checkCrlFile(crlFile: string, caFile: string, now = Date.now()): Promise<{ problems: string[]; warnings: string[] }> {
  const ca = await readFile(caFile).catch(() => undefined);
  const r = await readCrlFile(crlFile, ca ?? Buffer.alloc(0), now);
  if (ca || r.crls.length === 0) return { problems: r.problems, warnings: r.warnings };
  return { problems: [], warnings: [] };
}
