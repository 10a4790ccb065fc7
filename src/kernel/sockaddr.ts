// Converts between "host:port" and the kernel's sockaddr_in / sockaddr_in6 bytes.
import net from 'node:net';
import { AF_INET, AF_INET6, AF_UNIX } from './libc.js';

export interface Endpoint {
  host: string;
  port: number;
}

/** Encodes an IP literal + port; throws for a host name (resolve first). */
export function encodeSockaddr(ep: Endpoint): Buffer {
  const family = net.isIP(ep.host);
  if (family === 4) {
    const b = Buffer.alloc(16);
    b.writeUInt16LE(AF_INET, 0);
    b.writeUInt16BE(ep.port, 2);
    ep.host.split('.').forEach((o, i) => b.writeUInt8(Number(o), 4 + i));
    return b;
  }
  if (family === 6) {
    const b = Buffer.alloc(28);
    b.writeUInt16LE(AF_INET6, 0);
    b.writeUInt16BE(ep.port, 2);
    ipv6Bytes(ep.host).copy(b, 8);
    return b;
  }
  throw new Error(`not an IP address: ${ep.host}`);
}

function ipv6Bytes(host: string): Buffer {
  let addr = new net.SocketAddress({ address: host, family: 'ipv6' }).address;
  // An IPv4 tail (::ffff:1.2.3.4) is two groups: write it as such before counting groups.
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(addr);
  if (v4) {
    const o = v4.slice(1).map(Number);
    addr = addr.slice(0, v4.index) + `${((o[0]! << 8) | o[1]!).toString(16)}:${((o[2]! << 8) | o[3]!).toString(16)}`;
  }
  const parts = addr.split('::');
  const head = parts[0] ? parts[0].split(':') : [];
  const tail = parts.length > 1 && parts[1] ? parts[1].split(':') : [];
  const groups = [...head, ...Array<string>(parts.length > 1 ? 8 - head.length - tail.length : 0).fill('0'), ...tail];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/** Decodes a sockaddr to an Endpoint (IPv6 hosts without brackets). */
export function decodeSockaddr(b: Buffer): Endpoint | undefined {
  if (b.length < 2) return undefined;
  const family = b.readUInt16LE(0);
  if (family === AF_INET && b.length >= 8) {
    return { host: `${b[4]}.${b[5]}.${b[6]}.${b[7]}`, port: b.readUInt16BE(2) };
  }
  if (family === AF_INET6 && b.length >= 24) {
    const g: string[] = [];
    for (let i = 0; i < 8; i++) g.push(b.readUInt16BE(8 + i * 2).toString(16));
    const sa = new net.SocketAddress({ address: g.join(':'), family: 'ipv6' });
    return { host: sa.address, port: b.readUInt16BE(2) };
  }
  return undefined;
}

export function formatEndpoint(ep: Endpoint | undefined): string {
  if (!ep) return '?';
  return net.isIP(ep.host) === 6 ? `[${ep.host}]:${ep.port}` : `${ep.host}:${ep.port}`;
}

/** Longest sun_path in struct sockaddr_un (a path needs its NUL inside it; an abstract name does not). */
const SUN_PATH_MAX = 108;

/**
 * Encodes a Unix socket address: a path, or "@name" for a name in Linux's abstract namespace (a
 * leading NUL byte, no terminator: the address length bounds the name).
 */
export function encodeUnixSockaddr(address: string): Buffer {
  if (address === '' || address === '@') throw new Error(`empty Unix socket address "${address}"`);
  const abstract = address.startsWith('@');
  const name = Buffer.from(abstract ? address.slice(1) : address);
  if (name.includes(0)) throw new Error(`Unix socket address contains a NUL byte: ${JSON.stringify(address)}`);
  const room = SUN_PATH_MAX - 1; // abstract: the leading NUL takes a byte; a path: its trailing NUL does
  if (name.length > room) throw new Error(`Unix socket address is ${name.length} bytes, over the ${room}-byte limit: ${address}`);
  const b = Buffer.alloc(2 + 1 + name.length);
  b.writeUInt16LE(AF_UNIX, 0);
  if (abstract) name.copy(b, 3);
  else name.copy(b, 2); // the last byte stays 0: the path's terminator
  return b;
}

/** Decodes a sockaddr_un as getsockname returns it: a path, "@name" (abstract), or "" (unbound). */
export function decodeUnixSockaddr(b: Buffer): string | undefined {
  if (b.length < 2 || b.readUInt16LE(0) !== AF_UNIX) return undefined;
  if (b.length === 2) return '';
  if (b[2] === 0) return '@' + b.subarray(3).toString();
  const end = b.indexOf(0, 2);
  return b.subarray(2, end < 0 ? b.length : end).toString();
}
