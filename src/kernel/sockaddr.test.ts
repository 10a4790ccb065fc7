// Checks that socket addresses survive encoding and decoding, IPv4-mapped IPv6 ones (as decodeSockaddr writes them) included.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeSockaddr, encodeSockaddr } from './sockaddr.js';

test('every kind of address decodes back to what was encoded, the IPv4-mapped form with dots included', () => {
  const hosts = [
    '127.0.0.1',
    '203.0.113.7',
    '::1',
    '::',
    '2001:db8::1',
    '2001:db8:1:2:3:4:5:6',
    'fe80::1:2',
    '::ffff:203.0.113.7',
    '::ffff:127.0.0.1',
    '64:ff9b::10.0.0.1',
  ];
  for (const host of hosts) {
    const back = decodeSockaddr(encodeSockaddr({ host, port: 443 }));
    assert.ok(back, host);
    assert.equal(back.port, 443, host);
    assert.deepEqual(encodeSockaddr(back), encodeSockaddr({ host, port: 443 }), host);
  }
});

test('an IPv4-mapped address is the sixteen bytes ::ffff:a.b.c.d, whichever way it is written', () => {
  const dotted = encodeSockaddr({ host: '::ffff:203.0.113.7', port: 1 });
  const hex = encodeSockaddr({ host: '::ffff:cb00:7107', port: 1 });
  assert.deepEqual(dotted, hex);
  assert.deepEqual([...dotted.subarray(8, 24)], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 7]);
});
