// Checks the human-readable status report and its size/duration formatting.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { StatusSnapshot } from '../core/types.js';
import { formatBytes, formatDuration, formatStatus, StatusSnapshotSchema } from './status.js';

const NOW = Date.parse('2026-01-01T12:00:00Z');
const SNAPSHOT: StatusSnapshot = {
  pid: 4321,
  version: '0.1.0',
  startedAt: '2026-01-01T09:00:00.000Z',
  ktls: {
    available: true,
    ciphers: { 'TLSv1.2': ['ECDHE-RSA-AES256-GCM-SHA384'], 'TLSv1.3': ['TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256'] },
    rekey: false,
    policy: 'require',
  },
  listeners: [{ address: '[::1]:8443', backend: '127.0.0.1:8080' }],
  connections: [
    {
      id: 'c1',
      client: '[::1]:50000',
      backend: '127.0.0.1:8080',
      version: 'TLSv1.3',
      cipher: 'TLS_AES_128_GCM_SHA256',
      mode: 'kernel',
      bytesIn: 100,
      bytesOut: 3 * 1024 * 1024,
      ageMs: 125_000,
    },
    {
      id: 'c22',
      client: '127.0.0.1:40000',
      backend: '127.0.0.1:8080',
      version: 'TLSv1.2',
      cipher: 'ECDHE-RSA-AES256-GCM-SHA384',
      mode: 'user',
      bytesIn: 2048,
      bytesOut: 0,
      ageMs: 900,
    },
  ],
  counters: { accepted: 2, handshake_failed: 0 },
};

describe('formatBytes and formatDuration', () => {
  it('use binary units and compact durations', () => {
    assert.equal(formatBytes(0), '0 B');
    assert.equal(formatBytes(1023), '1023 B');
    assert.equal(formatBytes(1536), '1.5 KiB');
    assert.equal(formatBytes(200 * 1024), '200 KiB');
    assert.equal(formatBytes(3 * 1024 ** 3), '3.0 GiB');
    assert.equal(formatDuration(850), '850ms');
    assert.equal(formatDuration(42_000), '42s');
    assert.equal(formatDuration(192_000), '3m12s');
    assert.equal(formatDuration(2 * 3_600_000 + 5 * 60_000), '2h05m');
    assert.equal(formatDuration(3 * 86_400_000 + 4 * 3_600_000), '3d04h');
  });
});

describe('formatStatus', () => {
  it('prints the header, kTLS details, listeners and an aligned connections table', () => {
    const text = formatStatus(SNAPSHOT, NOW);
    const lines = text.split('\n');
    assert.match(lines[0], /^ironsocket 0\.1\.0 {2}pid 4321 {2}up 3h00m/);
    assert.match(text, /kTLS: available, policy require, rekey \(TLS 1\.3 KeyUpdate\) not supported/);
    assert.match(text, /TLSv1\.3: TLS_AES_128_GCM_SHA256 TLS_CHACHA20_POLY1305_SHA256/);
    assert.match(text, /\[::1\]:8443 -> 127\.0\.0\.1:8080/);
    assert.match(text, /Connections: 2 \(1 in kernel TLS, 1 in userspace\)/);
    const header = lines.find((l) => l.startsWith('ID'));
    assert.ok(header);
    assert.deepEqual(header.split(/\s+/), ['ID', 'CLIENT', 'BACKEND', 'VERSION', 'CIPHER', 'MODE', 'SNI/ALPN', 'IN', 'OUT', 'AGE']);
    const row = lines.find((l) => l.startsWith('c1 '));
    assert.ok(row);
    assert.deepEqual(row.split(/\s+/).filter(Boolean), [
      'c1',
      '[::1]:50000',
      '127.0.0.1:8080',
      'TLSv1.3',
      'TLS_AES_128_GCM_SHA256',
      'kernel',
      '-',
      '100',
      'B',
      '3.0',
      'MiB',
      '2m05s',
    ]);
    assert.equal(row.indexOf('kernel'), header.indexOf('MODE'));
    assert.match(text, /accepted\s+2/);
  });

  it('says why kTLS is unavailable and when there are no connections', () => {
    const text = formatStatus({ ...SNAPSHOT, ktls: { ...SNAPSHOT.ktls, available: false, reason: 'tls module not loaded' }, connections: [] }, NOW);
    assert.match(text, /kTLS: unavailable \(tls module not loaded\), policy require/);
    assert.match(text, /Connections: none/);
  });

  it("shows resident memory and each relay worker's JavaScript heap when the proxy reports them", () => {
    const text = formatStatus({ ...SNAPSHOT, memory: { rssKiB: 150 * 1024, relayHeapKiB: [6144, 7168] } }, NOW);
    assert.match(text, /memory: 150 MiB resident; JavaScript heap in use per relay worker: 6\.0 MiB, 7\.0 MiB/);
    assert.doesNotMatch(formatStatus(SNAPSHOT, NOW), /^memory:/m);
  });

  it('says where the session ticket keys come from, how long a ticket lives, and how many handshakes resumed', () => {
    const generated = formatStatus(
      {
        ...SNAPSHOT,
        tickets: {
          source: 'generated',
          keys: 3,
          names: ['0a0b0c0d', '01020304', 'a0b0c0d0'],
          encrypt: 1,
          lifetimeS: 7200,
          rotateEveryS: 7200,
          rotatedAt: '2026-01-01T11:00:00.000Z',
        },
        counters: { handshakes_full: 30, handshakes_resumed: 90 },
      },
      NOW,
    );
    assert.match(generated, /^session tickets: 3 keys generated in memory, rotated every 2h00m \(last 2026-01-01T11:00:00.000Z\); a ticket lives 2h00m$/m);
    assert.match(generated, /^handshakes: 30 full, 90 resumed from a ticket \(75% resumed\)$/m);
    const file = formatStatus(
      { ...SNAPSHOT, tickets: { source: 'key_file', keyFile: '/etc/ironsocket/tickets.keys', keys: 3, names: [], encrypt: 1, lifetimeS: 600 } },
      NOW,
    );
    assert.match(file, /^session tickets: 3 keys from \/etc\/ironsocket\/tickets.keys \(key 2 encrypts, all decrypt\); a ticket lives 10m00s$/m);
    assert.doesNotMatch(file, /^handshakes:/m);
  });

  it('accepts a StatusSnapshot through its schema', () => {
    assert.ok(StatusSnapshotSchema.safeParse(SNAPSHOT).success);
    assert.ok(!StatusSnapshotSchema.safeParse({ pid: 1 }).success);
  });
});
