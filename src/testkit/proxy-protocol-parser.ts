// Test support: a strict PROXY protocol v1/v2 parser written apart from the encoder, so tests check the wire format, not the code.
import net from 'node:net';
import type { Endpoint } from '../kernel/sockaddr.js';

export type ProxyFamily = 'TCP4' | 'TCP6' | 'UDP4' | 'UDP6' | 'UNIX_STREAM' | 'UNIX_DGRAM' | 'UNSPEC' | 'UNKNOWN';

export interface ParsedProxyHeader {
  version: 1 | 2;
  /** Bytes the header took: the payload starts at buf[length]. */
  length: number;
  command?: 'PROXY' | 'LOCAL';
  family: ProxyFamily;
  source: Endpoint;
  destination: Endpoint;
  tlvs: Map<number, Buffer>;
  ssl?: { client: number; verify: number; sub: Map<number, Buffer> };
  /** Present iff the header carries a CRC32C TLV. */
  crcOk?: boolean;
}

const SIG = Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1');
const NONE: Endpoint = { host: '', port: 0 };

/** Parses the PROXY header at the start of `buf`; throws on anything malformed or incomplete. */
export function parseProxyHeader(buf: Buffer): ParsedProxyHeader {
  if (buf.length >= SIG.length && buf.subarray(0, SIG.length).equals(SIG)) return parseV2(buf);
  if (buf.subarray(0, 6).toString('latin1') === 'PROXY ') return parseV1(buf);
  throw new Error('not a PROXY header: bad signature');
}

function parseV1(buf: Buffer): ParsedProxyHeader {
  const window = buf.subarray(0, 107).toString('latin1');
  const end = window.indexOf('\r\n');
  if (end < 0) throw new Error('v1: no CRLF in the first 107 bytes');
  const line = window.slice(0, end);
  if (/[\r\n]/.test(line)) throw new Error('v1: lone CR or LF inside the line');
  const base = { version: 1 as const, length: end + 2, tlvs: new Map<number, Buffer>() };
  const parts = line.split(' ');
  if (parts[1] === 'UNKNOWN') return { ...base, family: 'UNKNOWN', source: NONE, destination: NONE };
  if (parts.length !== 6) throw new Error(`v1: expected 6 fields, got ${parts.length}`);
  const [, proto, src, dst, sport, dport] = parts;
  const fam = proto === 'TCP4' ? 4 : proto === 'TCP6' ? 6 : 0;
  if (!fam) throw new Error(`v1: unknown protocol ${proto}`);
  for (const a of [src, dst]) {
    if (net.isIP(a) !== fam || a.includes('%')) throw new Error(`v1: ${a} is not a ${proto} address`);
  }
  const port = (p: string): number => {
    if (!/^(0|[1-9][0-9]{0,4})$/.test(p) || Number(p) > 65535) throw new Error(`v1: bad port ${p}`);
    return Number(p);
  };
  return { ...base, family: proto as ProxyFamily, source: { host: src, port: port(sport) }, destination: { host: dst, port: port(dport) } };
}

const FAMILIES: Record<number, [ProxyFamily, number]> = {
  0x00: ['UNSPEC', 0],
  0x11: ['TCP4', 12],
  0x12: ['UDP4', 12],
  0x21: ['TCP6', 36],
  0x22: ['UDP6', 36],
  0x31: ['UNIX_STREAM', 216],
  0x32: ['UNIX_DGRAM', 216],
};

function parseV2(buf: Buffer): ParsedProxyHeader {
  if (buf.length < 16) throw new Error('v2: truncated fixed header');
  if (buf[12] >> 4 !== 2) throw new Error(`v2: version ${buf[12] >> 4}, expected 2`);
  const cmd = buf[12] & 0x0f;
  if (cmd > 1) throw new Error(`v2: unassigned command ${cmd}`);
  const fam = FAMILIES[buf[13]];
  if (!fam) throw new Error(`v2: invalid family/protocol byte 0x${buf[13].toString(16)}`);
  const len = buf.readUInt16BE(14);
  const total = 16 + len;
  if (buf.length < total) throw new Error(`v2: length says ${total} bytes, only ${buf.length} bytes present`);
  const [family, addrLenFixed] = fam;
  const addrLen = family === 'UNSPEC' ? len : addrLenFixed;
  if (len < addrLen) throw new Error(`v2: length ${len} is shorter than the ${family} address block (${addrLen})`);
  let source = NONE;
  let destination = NONE;
  const a = buf.subarray(16, 16 + addrLen);
  if (addrLenFixed === 12) {
    const v4 = (o: number) => Array.from(a.subarray(o, o + 4)).join('.');
    source = { host: v4(0), port: a.readUInt16BE(8) };
    destination = { host: v4(4), port: a.readUInt16BE(10) };
  } else if (addrLenFixed === 36) {
    const v6 = (o: number) => {
      const groups = [];
      for (let i = 0; i < 16; i += 2) groups.push(a.readUInt16BE(o + i).toString(16));
      return new net.SocketAddress({ address: groups.join(':'), family: 'ipv6' }).address;
    };
    source = { host: v6(0), port: a.readUInt16BE(32) };
    destination = { host: v6(16), port: a.readUInt16BE(34) };
  } else if (addrLenFixed === 216) {
    const path = (o: number) =>
      a
        .subarray(o, o + 108)
        .toString('utf8')
        .replace(/\0.*$/s, '');
    source = { host: path(0), port: 0 };
    destination = { host: path(108), port: 0 };
  }
  const tlvStart = 16 + addrLen;
  const { map: tlvs, offsets } = readTlvs(buf.subarray(tlvStart, total), 'TLV');
  const out: ParsedProxyHeader = { version: 2, length: total, command: cmd ? 'PROXY' : 'LOCAL', family, source, destination, tlvs };
  const ssl = tlvs.get(0x20);
  if (ssl) {
    if (ssl.length < 5) throw new Error(`v2: SSL TLV is ${ssl.length} bytes, at least 5 needed`);
    out.ssl = { client: ssl[0], verify: ssl.readUInt32BE(1), sub: readTlvs(ssl.subarray(5), 'SSL sub-TLV').map };
  }
  const crc = tlvs.get(0x03);
  if (crc) {
    if (crc.length !== 4) throw new Error(`v2: CRC32C TLV is ${crc.length} bytes, expected 4`);
    const copy = Buffer.from(buf.subarray(0, total));
    copy.fill(0, tlvStart + offsets.get(0x03)!, tlvStart + offsets.get(0x03)! + 4);
    out.crcOk = crc32cBitwise(copy) === crc.readUInt32BE(0);
  }
  return out;
}

/** TLVs that must exactly fill `b`; a repeated type is refused. Offsets are of each value within `b`. */
function readTlvs(b: Buffer, what: string): { map: Map<number, Buffer>; offsets: Map<number, number> } {
  const map = new Map<number, Buffer>();
  const offsets = new Map<number, number>();
  let i = 0;
  while (i < b.length) {
    if (b.length - i < 3) throw new Error(`v2: ${what} header truncated at offset ${i}`);
    const type = b[i];
    const n = b.readUInt16BE(i + 1);
    if (i + 3 + n > b.length) throw new Error(`v2: ${what} 0x${type.toString(16)} says ${n} bytes, runs past the end`);
    if (map.has(type)) throw new Error(`v2: ${what} 0x${type.toString(16)} appears twice`);
    map.set(type, b.subarray(i + 3, i + 3 + n));
    offsets.set(type, i + 3);
    i += 3 + n;
  }
  return { map, offsets };
}

/** CRC32C bit by bit (the encoder's is table-driven), so the two check each other. */
export function crc32cBitwise(b: Uint8Array): number {
  let c = ~0 >>> 0;
  for (const byte of b) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0x82f63b78 & -(c & 1));
  }
  return ~c >>> 0;
}
