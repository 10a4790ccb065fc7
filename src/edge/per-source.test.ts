// What counts as one source (IPv4 address, IPv6 /64), exact counting over every close path, and the bound on rejection log lines.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { encodeSockaddr } from '../kernel/sockaddr.js';
import { NOTE_WINDOW_MS, NOTES_UNLIMITED } from '../relay/budget.js';
import { RejectionNotes, SourceCounts, sourceOf, sourceOfClient } from './per-source.js';

const at = (host: string) => sourceOf(encodeSockaddr({ host, port: 443 }));

describe('sourceOf', () => {
  it('counts an IPv4 address as itself, also when it arrives IPv4-mapped on a dual-stack socket', () => {
    assert.equal(at('203.0.113.7'), '203.0.113.7');
    const mapped = Buffer.alloc(28);
    mapped.writeUInt16LE(10, 0); // AF_INET6
    mapped.set([0xff, 0xff, 203, 0, 113, 7], 18);
    assert.equal(sourceOf(mapped), '203.0.113.7');
  });

  it('counts IPv6 addresses by their /64', () => {
    assert.equal(at('2001:db8:1:2::1'), '2001:db8:1:2::/64');
    assert.equal(at('2001:db8:1:2:ffff:ffff:ffff:ffff'), '2001:db8:1:2::/64');
    assert.notEqual(at('2001:db8:1:3::1'), at('2001:db8:1:2::1'));
    assert.equal(at('::1'), '0:0:0:0::/64');
  });

  it("finds the same source in a carried connection's recorded client address", () => {
    assert.equal(sourceOfClient('198.51.100.9:40000'), '198.51.100.9');
    assert.equal(sourceOfClient('[2001:db8::5]:40000'), '2001:db8:0:0::/64');
    assert.equal(sourceOfClient('[::ffff:203.0.113.7]:40000'), '203.0.113.7');
    assert.equal(sourceOfClient('?'), undefined);
  });
});

describe('SourceCounts', () => {
  const limits = { connections: 3, handshakes: 2 };

  it('says which limit a source is at, and 0 means no limit', () => {
    const c = new SourceCounts();
    c.opened('a', 's');
    assert.equal(c.over('s', limits), undefined);
    c.opened('b', 's');
    assert.equal(c.over('s', limits), 'handshakes');
    c.established('a');
    c.established('b');
    c.opened('c', 's');
    assert.equal(c.over('s', limits), 'connections');
    assert.equal(c.over('s', { connections: 0, handshakes: 0 }), undefined);
    assert.equal(c.over('other', limits), undefined);
  });

  it('drops back to nothing whichever way each connection ends, and ignores ids it does not know or already closed', () => {
    const c = new SourceCounts();
    c.opened('failed-handshake', 's');
    c.opened('relayed', 's');
    c.adopted('carried', 's');
    c.established('relayed');
    assert.deepEqual(c.count('s'), { source: 's', connections: 3, handshakes: 1 });
    c.closed('failed-handshake');
    c.closed('failed-handshake');
    c.closed('never-seen');
    c.established('carried');
    assert.deepEqual(c.count('s'), { source: 's', connections: 2, handshakes: 0 });
    c.closed('relayed');
    c.closed('carried');
    assert.equal(c.sources, 0);
    assert.deepEqual(c.busiest(5), []);
  });
});

describe('RejectionNotes', () => {
  it('logs the first lines of a window, then one summary with how many were left out', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'] });
    const lines: string[] = [];
    const notes = new RejectionNotes((l) => lines.push(l));
    for (let i = 0; i < 1000; i++) notes.note(`rejected ${i}`);
    assert.equal(lines.length, NOTES_UNLIMITED);
    t.mock.timers.tick(NOTE_WINDOW_MS);
    assert.equal(lines.length, NOTES_UNLIMITED + 1);
    assert.equal(lines.at(-1), `${1000 - NOTES_UNLIMITED} more rejection(s) in the last 10 s not logged one by one; the last: rejected 999`);
    notes.note('next window');
    assert.equal(lines.at(-1), 'next window');
  });
});
