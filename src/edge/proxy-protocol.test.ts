// PROXY protocol v1/v2 headers: exact bytes, TLVs and CRC32C checked through an independent parser and over a real socket.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { PP2, crc32c, encodeProxyV1, encodeProxyV2, type ProxyHeaderInfo, type ProxyHeaderTls } from './proxy-protocol.js';
import { crc32cBitwise, parseProxyHeader } from '../testkit/proxy-protocol-parser.js';

const V4: ProxyHeaderInfo = { client: { host: '192.0.2.1', port: 56324 }, proxy: { host: '198.51.100.7', port: 443 } };
const V6: ProxyHeaderInfo = { client: { host: '2001:db8::1', port: 40000 }, proxy: { host: '2001:db8::2', port: 443 } };
const TLS: ProxyHeaderTls = { version: 'TLSv1.3', cipher: 'TLS_AES_128_GCM_SHA256', sni: 'app.example.com', alpn: 'h2' };
const SIG_HEX = '0d0a0d0a000d0a515549540a';

function v1(info: ProxyHeaderInfo): string {
  return encodeProxyV1(info).toString('ascii');
}

describe('encodeProxyV1', () => {
  it('writes a TCP4 line with both addresses and ports for an IPv4 connection', () => {
    assert.equal(v1(V4), 'PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n');
  });

  it('writes a TCP6 line with compressed lower-case IPv6 addresses whatever form they came in', () => {
    assert.equal(v1(V6), 'PROXY TCP6 2001:db8::1 2001:db8::2 40000 443\r\n');
    const long = { client: { host: '2001:0DB8:0:0:1:0:0:1', port: 1 }, proxy: { host: 'fe80::1%eth0', port: 2 } };
    assert.equal(v1(long), 'PROXY TCP6 2001:db8::1:0:0:1 fe80::1 1 2\r\n');
  });

  it('renders IPv4-mapped IPv6 addresses as TCP4 when both ends are IPv4 or IPv4-mapped', () => {
    assert.equal(
      v1({ client: { host: '::ffff:192.0.2.1', port: 5 }, proxy: { host: '198.51.100.7', port: 443 } }),
      'PROXY TCP4 192.0.2.1 198.51.100.7 5 443\r\n',
    );
    assert.equal(
      v1({ client: { host: '::ffff:192.0.2.1', port: 5 }, proxy: { host: '::FFFF:c633:6407', port: 6 } }),
      'PROXY TCP4 192.0.2.1 198.51.100.7 5 6\r\n',
    );
  });

  it('maps the IPv4 end into IPv6 (hex groups only) when the two ends have different families', () => {
    const line = v1({ client: { host: '2001:db8::1', port: 7 }, proxy: { host: '198.51.100.7', port: 443 } });
    assert.equal(line, 'PROXY TCP6 2001:db8::1 ::ffff:c633:6407 7 443\r\n');
    const p = parseProxyHeader(Buffer.from(line));
    assert.deepEqual([p.family, p.destination], ['TCP6', { host: '::ffff:c633:6407', port: 443 }]);
  });

  it('never emits UNKNOWN and fits the longest IPv6 line in the 107 bytes a receiver reads', () => {
    const f = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';
    const line = encodeProxyV1({ client: { host: f, port: 65535 }, proxy: { host: f, port: 65535 } });
    assert.equal(line.length, 104);
    assert.equal(parseProxyHeader(line).family, 'TCP6');
    assert.ok(!v1({ client: { host: '0.0.0.0', port: 0 }, proxy: { host: '::', port: 0 } }).includes('UNKNOWN'));
  });

  it('rejects a host that is not an IP literal and a port outside 0..65535, naming the field', () => {
    assert.throws(() => encodeProxyV1({ ...V4, client: { host: 'example.com', port: 1 } }), /client host "example.com" is not an IP literal/);
    assert.throws(() => encodeProxyV2({ ...V4, proxy: { host: '1.2.3.4', port: 65536 } }), /proxy port 65536 is not in 0..65535/);
  });
});

describe('encodeProxyV2', () => {
  it('encodes an IPv4 connection byte for byte as computed by hand', () => {
    const crc = 'd45a11b9'; // computed with a separate Python CRC32C over the header with this field zeroed
    assert.equal(encodeProxyV2(V4).toString('hex'), SIG_HEX + '21110013' + 'c0000201c6336407dc0401bb' + '030004' + crc);
  });

  it('encodes an IPv6 connection byte for byte as computed by hand', () => {
    const addrs = '20010db8000000000000000000000001' + '20010db8000000000000000000000002' + '9c4001bb';
    assert.equal(encodeProxyV2(V6).toString('hex'), SIG_HEX + '2121002b' + addrs + '030004' + 'f87f3a7a');
  });

  it('uses AF_INET for v4-mapped ends and AF_INET6 with the IPv4 end mapped when families differ', () => {
    const mapped = parseProxyHeader(encodeProxyV2({ client: { host: '::ffff:192.0.2.1', port: 1 }, proxy: { host: '198.51.100.7', port: 2 } }));
    assert.deepEqual([mapped.family, mapped.source.host, mapped.destination.host], ['TCP4', '192.0.2.1', '198.51.100.7']);
    const mixed = encodeProxyV2({ client: { host: '2001:db8::1', port: 1 }, proxy: { host: '198.51.100.7', port: 2 } });
    assert.equal(mixed[13], 0x21);
    assert.equal(mixed.subarray(32, 48).toString('hex'), '00000000000000000000ffffc6336407');
  });

  it('puts the SNI, ALPN, TLS version and cipher in v2 TLVs a parser reads back', () => {
    const p = parseProxyHeader(encodeProxyV2({ ...V6, tls: TLS }));
    assert.deepEqual([p.version, p.command, p.family, p.source, p.destination], [2, 'PROXY', 'TCP6', V6.client, V6.proxy]);
    assert.equal(p.tlvs.get(PP2.TYPE_AUTHORITY)?.toString(), 'app.example.com');
    assert.equal(p.tlvs.get(PP2.TYPE_ALPN)?.toString(), 'h2');
    assert.equal(p.ssl?.sub.get(PP2.SUBTYPE_SSL_VERSION)?.toString(), 'TLSv1.3');
    assert.equal(p.ssl?.sub.get(PP2.SUBTYPE_SSL_CIPHER)?.toString(), 'TLS_AES_128_GCM_SHA256');
    assert.equal(p.crcOk, true);
  });

  it("carries the unique id, the verified client's CN and Iron Socket's subject TLV 0xE0 through the parser", () => {
    const uniqueId = Buffer.from([0, 1, 2, 0xff, 0x0d, 0x0a]);
    const clientCert = { verified: true, subjectCN: 'alice é', subject: 'CN=alice é,O=Example' };
    const p = parseProxyHeader(encodeProxyV2({ ...V4, uniqueId, tls: { ...TLS, clientCert } }));
    assert.deepEqual(p.tlvs.get(PP2.TYPE_UNIQUE_ID), uniqueId);
    assert.equal(p.ssl?.sub.get(PP2.SUBTYPE_SSL_CN)?.toString('utf8'), 'alice é');
    assert.equal(p.tlvs.get(PP2.TYPE_IRONSOCKET_SUBJECT)?.toString('utf8'), 'CN=alice é,O=Example');
    assert.deepEqual(
      [...p.tlvs.keys()].sort((a, b) => a - b),
      [0x01, 0x02, 0x03, 0x05, 0x20, 0xe0],
    );
  });

  it('sets the client flags and verify field for a verified, an unverified and an absent client certificate', () => {
    const ssl = (clientCert?: ProxyHeaderTls['clientCert']) => parseProxyHeader(encodeProxyV2({ ...V4, tls: { ...TLS, clientCert } }));
    const verified = ssl({ verified: true, subjectCN: 'alice', subject: 'CN=alice' });
    assert.deepEqual([verified.ssl?.client, verified.ssl?.verify], [PP2.CLIENT_SSL | PP2.CLIENT_CERT_CONN | PP2.CLIENT_CERT_SESS, 0]);
    const unverified = ssl({ verified: false, subjectCN: 'mallory', subject: 'CN=mallory' });
    assert.deepEqual([unverified.ssl?.client, unverified.ssl?.verify], [0x07, 1]);
    assert.equal(unverified.ssl?.sub.has(PP2.SUBTYPE_SSL_CN), false);
    assert.equal(unverified.tlvs.has(PP2.TYPE_IRONSOCKET_SUBJECT), false);
    const absent = ssl(undefined);
    assert.deepEqual([absent.ssl?.client, absent.ssl?.verify], [PP2.CLIENT_SSL, 1]);
    assert.deepEqual([...(absent.ssl?.sub.keys() ?? [])], [PP2.SUBTYPE_SSL_VERSION, PP2.SUBTYPE_SSL_CIPHER]);
  });

  it('sends no SSL, ALPN or authority TLV when there is no TLS info, only the CRC32C', () => {
    assert.deepEqual([...parseProxyHeader(encodeProxyV2(V4)).tlvs.keys()], [PP2.TYPE_CRC32C]);
  });

  it('computes a CRC32C that matches the standard check value, and a flipped byte makes it fail', () => {
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
    assert.equal(crc32cBitwise(Buffer.from('123456789')), 0xe3069283);
    const hdr = encodeProxyV2({ ...V6, tls: TLS });
    assert.equal(parseProxyHeader(hdr).crcOk, true);
    for (const at of [17, hdr.indexOf('app.example.com') + 2, hdr.length - 1]) {
      const bad = Buffer.from(hdr);
      bad[at] ^= 0x01;
      assert.equal(parseProxyHeader(bad).crcOk, false, `flipped byte ${at}`);
    }
  });

  it('accepts a 128-byte unique id and rejects a longer one with an error naming the field', () => {
    assert.equal(parseProxyHeader(encodeProxyV2({ ...V4, uniqueId: Buffer.alloc(128, 7) })).tlvs.get(PP2.TYPE_UNIQUE_ID)?.length, 128);
    assert.throws(() => encodeProxyV2({ ...V4, uniqueId: Buffer.alloc(129) }), /unique id is 129 bytes, at most 128/);
  });

  it('rejects an SNI with CR/LF, an over-long ALPN and control characters in the other TLS strings, naming the field', () => {
    const bad = (tls: Partial<ProxyHeaderTls>) => () => encodeProxyV2({ ...V4, tls: { ...TLS, ...tls } });
    assert.throws(bad({ sni: 'a.example\r\nX: 1' }), /SNI contains a control character/);
    assert.throws(bad({ alpn: 'x'.repeat(256) }), /ALPN is 256 bytes, at most 255/);
    assert.throws(bad({ sni: '' }), /SNI is empty/);
    assert.throws(bad({ cipher: 'AES\0' }), /TLS cipher contains a control character/);
    assert.throws(bad({ version: 'TLSv1.3é' }), /TLS version must be printable US-ASCII/);
    assert.throws(bad({ clientCert: { verified: true, subject: 'CN=a\nO=b' } }), /client certificate subject contains a control character/);
  });

  it('rejects a header whose TLVs would overflow the 16-bit length field', () => {
    const clientCert = { verified: true, subjectCN: 'c'.repeat(1000), subject: 's'.repeat(65000) };
    assert.throws(() => encodeProxyV2({ ...V4, tls: { ...TLS, clientCert } }), /the v2 length field holds at most 65535/);
  });

  it('is followed exactly by the payload: v1 ends at CRLF and the v2 length field covers the whole header', () => {
    const payload = Buffer.from('GET / HTTP/1.1\r\nHost: a\r\n\r\n');
    for (const hdr of [encodeProxyV1(V6), encodeProxyV2({ ...V6, tls: TLS, uniqueId: Buffer.from('id-1') })]) {
      const p = parseProxyHeader(Buffer.concat([hdr, payload]));
      assert.equal(p.length, hdr.length);
      assert.deepEqual(Buffer.concat([hdr, payload]).subarray(p.length), payload);
    }
    const v2 = encodeProxyV2({ ...V4, tls: TLS });
    assert.equal(16 + v2.readUInt16BE(14), v2.length);
  });
});

describe('parseProxyHeader (test kit)', () => {
  it('throws on a bad signature, a truncated v2 header, and a v1 line without CRLF or longer than 107 bytes', () => {
    const v2 = encodeProxyV2(V4);
    assert.throws(() => parseProxyHeader(Buffer.from('GET / HTTP/1.1\r\n')), /bad signature/);
    assert.throws(() => parseProxyHeader(v2.subarray(0, v2.length - 1)), /only \d+ bytes present/);
    assert.throws(() => parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n')), /no CRLF/);
    assert.throws(() => parseProxyHeader(Buffer.from(`PROXY UNKNOWN ${'f'.repeat(100)}\r\n`)), /no CRLF in the first 107/);
  });
});

/** Reads exactly n bytes from a paused socket, waiting for more as needed. */
async function readExactly(sock: net.Socket, n: number): Promise<Buffer> {
  for (;;) {
    const chunk = sock.read(n) as Buffer | null;
    if (chunk) {
      assert.equal(chunk.length, n, 'stream ended early');
      return chunk;
    }
    await once(sock, 'readable');
  }
}

describe('PROXY v2 over TCP', () => {
  it('sends a v2 header over a real TCP socket that the receiver parses before reading the payload', async () => {
    const header = encodeProxyV2({ ...V4, tls: { ...TLS, clientCert: { verified: true, subjectCN: 'alice' } }, uniqueId: Buffer.from('conn-42') });
    const payload = Buffer.from('hello backend, these bytes come after the header');
    const server = net.createServer();
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const accepted = once(server, 'connection') as Promise<[net.Socket]>;
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    await once(client, 'connect');
    client.write(header);
    await delay(20);
    client.end(payload);
    const [sock] = await accepted;
    try {
      const fixed = await readExactly(sock, 16);
      const rest = await readExactly(sock, fixed.readUInt16BE(14));
      const parsed = parseProxyHeader(Buffer.concat([fixed, rest]));
      assert.equal(parsed.length, header.length);
      assert.equal(parsed.crcOk, true);
      assert.deepEqual([parsed.source, parsed.destination], [V4.client, V4.proxy]);
      assert.equal(parsed.ssl?.sub.get(PP2.SUBTYPE_SSL_CN)?.toString(), 'alice');
      assert.equal(parsed.tlvs.get(PP2.TYPE_UNIQUE_ID)?.toString(), 'conn-42');
      assert.deepEqual(await readExactly(sock, payload.length), payload);
    } finally {
      sock.destroy();
      client.destroy();
      server.close();
    }
  });
});
