// Builds the PROXY protocol v1/v2 header Iron Socket sends to a backend first, so it learns the real client and TLS facts.
//
// Follows haproxy's doc/proxy-protocol.txt. v2 always ends with a PP2_TYPE_CRC32C TLV. Iron Socket's own TLV:
//   0xE0 (PP2.TYPE_IRONSOCKET_SUBJECT, from the spec's application-specific range 0xE0-0xEF): the full subject DN of a
//   client certificate that was presented AND verified, as one UTF-8 line (e.g. "CN=alice,O=Example"; no newlines).
// SSL TLV `verify` follows the spec text: 0 only when the client presented a certificate and it was verified, 1 otherwise
// (haproxy itself sends 0 when no certificate was presented; receivers should check PP2_CLIENT_CERT_CONN first).
// Every check that fails throws an Error naming the field and the reason; the caller logs it and closes the connection.
import net from 'node:net';
import type { Endpoint } from '../kernel/sockaddr.js';

export interface ProxyHeaderTls {
  version: string;
  cipher: string;
  sni?: string;
  alpn?: string;
  /** Present iff the client sent a certificate. `subject` is one line, RFC 4514 style. */
  clientCert?: { verified: boolean; subjectCN?: string; subject?: string };
}
export interface ProxyHeaderInfo {
  client: Endpoint;
  proxy: Endpoint;
  tls?: ProxyHeaderTls;
  uniqueId?: Buffer;
}

export const PP2 = {
  SIGNATURE: Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]),
  VERSION_2_PROXY: 0x21,
  TCP_OVER_IPV4: 0x11,
  TCP_OVER_IPV6: 0x21,
  TYPE_ALPN: 0x01,
  TYPE_AUTHORITY: 0x02,
  TYPE_CRC32C: 0x03,
  TYPE_UNIQUE_ID: 0x05,
  TYPE_SSL: 0x20,
  SUBTYPE_SSL_VERSION: 0x21,
  SUBTYPE_SSL_CN: 0x22,
  SUBTYPE_SSL_CIPHER: 0x23,
  TYPE_IRONSOCKET_SUBJECT: 0xe0,
  CLIENT_SSL: 0x01,
  CLIENT_CERT_CONN: 0x02,
  CLIENT_CERT_SESS: 0x04,
  VERIFY_OK: 0,
  VERIFY_NOT_OK: 1,
  UNIQUE_ID_MAX: 128,
} as const;

// ---- addresses ----

interface Addr {
  bytes: Buffer; // 4 or 16 bytes
  port: number;
}

function parseAddr(field: string, ep: Endpoint): Addr {
  if (!Number.isInteger(ep.port) || ep.port < 0 || ep.port > 65535) throw new Error(`PROXY header: ${field} port ${ep.port} is not in 0..65535`);
  const host = ep.host.replace(/%.*$/, ''); // a zone id (fe80::1%eth0) has no place on the wire
  const family = net.isIP(host);
  if (family === 4) return { bytes: Buffer.from(host.split('.').map(Number)), port: ep.port };
  if (family !== 6) throw new Error(`PROXY header: ${field} host ${JSON.stringify(ep.host)} is not an IP literal`);
  const groups: number[] = [];
  const toGroups = (s: string): number[] => {
    const out: number[] = [];
    for (const part of s ? s.split(':') : []) {
      if (part.includes('.')) {
        const o = part.split('.').map(Number);
        out.push((o[0] << 8) | o[1], (o[2] << 8) | o[3]);
      } else out.push(parseInt(part, 16));
    }
    return out;
  };
  const [head, tail] = host.split('::');
  const h = toGroups(head);
  const t = tail === undefined ? [] : toGroups(tail);
  groups.push(...h, ...new Array<number>(8 - h.length - t.length).fill(0), ...t);
  const bytes = Buffer.alloc(16);
  groups.forEach((g, i) => bytes.writeUInt16BE(g, i * 2));
  return { bytes, port: ep.port };
}

const MAPPED_PREFIX = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);

/** The v4 address inside ::ffff:a.b.c.d, or the address itself. */
function unmap(a: Addr): Addr {
  if (a.bytes.length === 16 && a.bytes.subarray(0, 12).equals(MAPPED_PREFIX)) return { bytes: a.bytes.subarray(12), port: a.port };
  return a;
}

function toV6(a: Addr): Addr {
  return a.bytes.length === 16 ? a : { bytes: Buffer.concat([MAPPED_PREFIX, a.bytes]), port: a.port };
}

/** Both endpoints in one family: v4 when both are v4 (or v4-mapped), else v6 with any v4 one mapped. */
function pair(info: ProxyHeaderInfo): [Addr, Addr] {
  const src = unmap(parseAddr('client', info.client));
  const dst = unmap(parseAddr('proxy', info.proxy));
  return src.bytes.length === 4 && dst.bytes.length === 4 ? [src, dst] : [toV6(src), toV6(dst)];
}

/** v1 text: dotted decimal, or RFC 5952 hex groups (no dotted tail: the spec asks for hex groups only). */
function addrText(b: Buffer): string {
  if (b.length === 4) return Array.from(b).join('.');
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push(b.readUInt16BE(i));
  let best = -1;
  let bestLen = 1; // a single zero group is not compressed
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = (xs: number[]) => xs.map((x) => x.toString(16)).join(':');
  return best < 0 ? hex(g) : `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

export function encodeProxyV1(info: ProxyHeaderInfo): Buffer {
  const [src, dst] = pair(info);
  const proto = src.bytes.length === 4 ? 'TCP4' : 'TCP6';
  return Buffer.from(`PROXY ${proto} ${addrText(src.bytes)} ${addrText(dst.bytes)} ${src.port} ${dst.port}\r\n`, 'ascii');
}

// ---- TLVs ----

function tlv(field: string, type: number, value: Buffer): Buffer {
  if (value.length > 0xffff) throw new Error(`PROXY header: ${field} is ${value.length} bytes, a TLV value holds at most 65535`);
  const head = Buffer.alloc(3);
  head.writeUInt8(type, 0);
  head.writeUInt16BE(value.length, 1);
  return Buffer.concat([head, value]);
}

/** A UTF-8 string without control characters (CR, LF, NUL...), 1..max bytes; `ascii` also demands printable US-ASCII. */
function text(field: string, value: string, max: number, ascii = false): Buffer {
  if (/[\u0000-\u001f\u007f]/.test(value)) throw new Error(`PROXY header: ${field} contains a control character (CR, LF, NUL...)`);
  if (ascii && /[^\u0020-\u007e]/.test(value)) throw new Error(`PROXY header: ${field} must be printable US-ASCII`);
  const b = Buffer.from(value, 'utf8');
  if (b.length === 0) throw new Error(`PROXY header: ${field} is empty`);
  if (b.length > max) throw new Error(`PROXY header: ${field} is ${b.length} bytes, at most ${max} allowed`);
  return b;
}

function sslTlv(t: ProxyHeaderTls): Buffer {
  const cert = t.clientCert;
  let client: number = PP2.CLIENT_SSL;
  if (cert) client |= PP2.CLIENT_CERT_CONN | PP2.CLIENT_CERT_SESS; // sent on this connection, hence on its session too
  const head = Buffer.alloc(5);
  head.writeUInt8(client, 0);
  head.writeUInt32BE(cert?.verified ? PP2.VERIFY_OK : PP2.VERIFY_NOT_OK, 1);
  const parts = [head, tlv('TLS version', PP2.SUBTYPE_SSL_VERSION, text('TLS version', t.version, 255, true))];
  if (cert?.verified && cert.subjectCN !== undefined) {
    parts.push(tlv('client certificate CN', PP2.SUBTYPE_SSL_CN, text('client certificate CN', cert.subjectCN, 0xffff)));
  }
  parts.push(tlv('TLS cipher', PP2.SUBTYPE_SSL_CIPHER, text('TLS cipher', t.cipher, 255, true)));
  return tlv('SSL TLV', PP2.TYPE_SSL, Buffer.concat(parts));
}

// ---- CRC32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven ----

const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

export function crc32c(buf: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC32C_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

export function encodeProxyV2(info: ProxyHeaderInfo): Buffer {
  const [src, dst] = pair(info);
  const v4 = src.bytes.length === 4;
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(src.port, 0);
  ports.writeUInt16BE(dst.port, 2);
  const body: Buffer[] = [src.bytes, dst.bytes, ports];
  const t = info.tls;
  if (t?.alpn !== undefined) body.push(tlv('ALPN', PP2.TYPE_ALPN, text('ALPN', t.alpn, 255)));
  if (t?.sni !== undefined) body.push(tlv('SNI', PP2.TYPE_AUTHORITY, text('SNI', t.sni, 255)));
  if (info.uniqueId !== undefined) {
    if (info.uniqueId.length > PP2.UNIQUE_ID_MAX) {
      throw new Error(`PROXY header: unique id is ${info.uniqueId.length} bytes, at most ${PP2.UNIQUE_ID_MAX} allowed`);
    }
    body.push(tlv('unique id', PP2.TYPE_UNIQUE_ID, info.uniqueId));
  }
  if (t) {
    body.push(sslTlv(t));
    const subject = t.clientCert?.verified ? t.clientCert.subject : undefined;
    if (subject !== undefined) body.push(tlv('client certificate subject', PP2.TYPE_IRONSOCKET_SUBJECT, text('client certificate subject', subject, 0xffff)));
  }
  body.push(tlv('CRC32C', PP2.TYPE_CRC32C, Buffer.alloc(4)));
  const rest = Buffer.concat(body);
  if (rest.length > 0xffff) throw new Error(`PROXY header: addresses and TLVs take ${rest.length} bytes, the v2 length field holds at most 65535`);
  const head = Buffer.alloc(16);
  PP2.SIGNATURE.copy(head, 0);
  head.writeUInt8(PP2.VERSION_2_PROXY, 12);
  head.writeUInt8(v4 ? PP2.TCP_OVER_IPV4 : PP2.TCP_OVER_IPV6, 13);
  head.writeUInt16BE(rest.length, 14);
  const out = Buffer.concat([head, rest]);
  out.writeUInt32BE(crc32c(out), out.length - 4); // the CRC TLV is last; its value was zero while summing
  return out;
}
