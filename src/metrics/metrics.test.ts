// Checks that /metrics values are derived from the proxy's snapshot at scrape time: exact values, generic counters, upgrades, tls_stat.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { register as globalRegistry } from 'prom-client';
import { parsePromText } from '../testkit/prom-text.js';
import { createMetrics, type MetricsSnapshot } from './metrics.js';

let dir: string;
let noTlsStat: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ironsocket-metrics-'));
  noTlsStat = join(dir, 'no-such-tls_stat');
});
after(() => rm(dir, { recursive: true, force: true }));

/** Every ironsocket_* series of one scrape as `name{k="v",...}` → value (labels sorted), after a strict parse. */
async function scrape(render: () => Promise<string>): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const [family, f] of parsePromText(await render())) {
    if (!family.startsWith('ironsocket_')) continue;
    for (const s of f.samples) {
      const labels = Object.keys(s.labels)
        .sort()
        .map((k) => `${k}="${s.labels[k]}"`)
        .join(',');
      out[labels ? `${s.name}{${labels}}` : s.name] = s.value;
    }
  }
  return out;
}

const base = (over: Partial<MetricsSnapshot> = {}): MetricsSnapshot => ({
  counters: {},
  live: { kernel: 0, user: 0 },
  handshakesInProgress: 0,
  bytes: { in: 0, out: 0 },
  listeners: 1,
  ...over,
});

/** The series every scrape has, all zero: handshake and backend reasons, plain counters. */
const ZEROS: Record<string, number> = {
  'ironsocket_connections{mode="kernel"}': 0,
  'ironsocket_connections{mode="user"}': 0,
  ironsocket_handshakes_in_progress: 0,
  'ironsocket_handshakes_total{result="ok"}': 0,
  'ironsocket_handshakes_total{result="failed"}': 0,
  'ironsocket_handshakes_completed_total{kind="full"}': 0,
  'ironsocket_handshakes_completed_total{kind="resumed"}': 0,
  ...Object.fromEntries(
    ['timeout', 'client-closed', 'io', 'malformed', 'tls', 'unsupported-suite', 'internal', 'aborted'].map((r) => [
      `ironsocket_handshakes_failed_total{reason="${r}"}`,
      0,
    ]),
  ),
  ...Object.fromEntries(['refused', 'timeout', 'unreachable', 'error'].map((r) => [`ironsocket_backend_errors_total{reason="${r}"}`, 0])),
  ...Object.fromEntries(
    [
      'completed',
      'client_truncated',
      'client_alert',
      'protocol_error',
      'client_error',
      'backend_error',
      'idle_timeout',
      'shutdown',
      'restore_failed',
      'not_resumable',
    ].map((c) => [`ironsocket_connections_closed_by_cause_total{cause="${c}"}`, 0]),
  ),
  'ironsocket_bytes_total{direction="in"}': 0,
  'ironsocket_bytes_total{direction="out"}': 0,
  'ironsocket_rejected_per_source_total{limit="connections"}': 0,
  'ironsocket_rejected_per_source_total{limit="handshakes"}': 0,
  ironsocket_connections_accepted_total: 0,
  ironsocket_connections_closed_total: 0,
  ironsocket_early_data_refused_total: 0,
  ironsocket_handshakes_aborted_by_upgrade_total: 0,
  ironsocket_ktls_install_failed_total: 0,
  ironsocket_upgrades_total: 0,
  ironsocket_upgrades_failed_total: 0,
  ironsocket_upgrade_restore_failed_total: 0,
  ironsocket_fd_store_resumed_total: 0,
  ironsocket_handshakes_ticket_unknown_total: 0,
  ironsocket_listeners: 0,
};

describe('createMetrics', () => {
  it('turns a scripted snapshot into exactly the expected series', async () => {
    const snap = base({
      counters: {
        connections_accepted: 42,
        connections_closed: 30,
        closed_completed: 22,
        closed_protocol_error: 3,
        closed_idle_timeout: 5,
        handshakes_ok: 35,
        handshakes_full: 14,
        handshakes_resumed: 21,
        handshakes_ticket_unknown: 4,
        handshake_failed_timeout: 3,
        'handshake_failed_client-closed': 2,
        backend_refused: 4,
        ktls_install_failed: 1,
        upgrades: 2,
        upgrades_failed: 1,
        upgrade_restore_failed: 5,
        handshakes_aborted_by_upgrade: 6,
        connections_kernel: 20,
        connections_user: 11,
        bytes_in: 1000,
        bytes_out: 2000,
        rejected_per_source_connections: 8,
        rejected_per_source_handshakes: 13,
      },
      live: { kernel: 7, user: 3 },
      handshakesInProgress: 2,
      sources: 4,
      bytes: { in: 1500, out: 2600 },
      upgrade: { generation: 3, lastStallMs: 250, lastMoved: 9, lastOk: true },
      listeners: 2,
    });
    const m = createMetrics(() => snap, { tlsStatPath: noTlsStat });
    assert.deepEqual(await scrape(m.render), {
      ...ZEROS,
      'ironsocket_connections{mode="kernel"}': 7,
      'ironsocket_connections{mode="user"}': 3,
      'ironsocket_connections_total{mode="kernel"}': 20,
      'ironsocket_connections_total{mode="user"}': 11,
      ironsocket_handshakes_in_progress: 2,
      'ironsocket_handshakes_total{result="ok"}': 35,
      'ironsocket_handshakes_total{result="failed"}': 5,
      'ironsocket_handshakes_completed_total{kind="full"}': 14,
      'ironsocket_handshakes_completed_total{kind="resumed"}': 21,
      ironsocket_handshakes_ticket_unknown_total: 4,
      'ironsocket_handshakes_failed_total{reason="timeout"}': 3,
      'ironsocket_handshakes_failed_total{reason="client-closed"}': 2,
      'ironsocket_handshakes_failed_total{reason="client_cert_missing"}': 0,
      'ironsocket_handshakes_failed_total{reason="client_cert_revoked"}': 0,
      'ironsocket_handshakes_failed_total{reason="client_cert_untrusted"}': 0,
      'ironsocket_backend_errors_total{reason="refused"}': 4,
      'ironsocket_connections_closed_by_cause_total{cause="completed"}': 22,
      'ironsocket_connections_closed_by_cause_total{cause="protocol_error"}': 3,
      'ironsocket_connections_closed_by_cause_total{cause="idle_timeout"}': 5,
      'ironsocket_bytes_total{direction="in"}': 1500,
      'ironsocket_bytes_total{direction="out"}': 2600,
      'ironsocket_rejected_per_source_total{limit="connections"}': 8,
      'ironsocket_rejected_per_source_total{limit="handshakes"}': 13,
      ironsocket_sources: 4,
      ironsocket_connections_accepted_total: 42,
      ironsocket_connections_closed_total: 30,
      ironsocket_handshakes_aborted_by_upgrade_total: 6,
      ironsocket_ktls_install_failed_total: 1,
      ironsocket_upgrades_total: 2,
      ironsocket_upgrades_failed_total: 1,
      ironsocket_upgrade_restore_failed_total: 5,
      ironsocket_listeners: 2,
      ironsocket_generation: 3,
      ironsocket_upgrade_last_stall_seconds: 0.25,
      ironsocket_upgrade_last_moved_connections: 9,
      ironsocket_upgrade_last_success: 1,
    });
    assert.equal(m.contentType, 'text/plain; version=0.0.4; charset=utf-8');
  });

  it('labels the connection families by listener, and leaves what no listener was counted for unlabelled', async () => {
    const snap = base({
      counters: { connections_accepted: 9, connections_closed: 5, closed_completed: 5, connections_user: 7, bytes_in: 900, bytes_out: 90 },
      live: { kernel: 0, user: 2 },
      bytes: { in: 1000, out: 100 },
      byListener: [
        {
          name: 'web',
          counters: { connections_accepted: 4, connections_closed: 2, closed_completed: 2, connections_user: 3, bytes_in: 500, bytes_out: 50 },
          live: { kernel: 0, user: 1 },
          bytes: { in: 550, out: 55 },
        },
        { name: 'db', counters: {}, live: { kernel: 0, user: 0 }, bytes: { in: 0, out: 0 } },
      ],
    });
    const series = await scrape(createMetrics(() => snap, { tlsStatPath: noTlsStat }).render);
    const of = (family: string) => Object.fromEntries(Object.entries(series).filter(([k]) => k === family || k.startsWith(`${family}{`)));
    assert.deepEqual(of('ironsocket_connections_accepted_total'), {
      'ironsocket_connections_accepted_total{listener="web"}': 4,
      'ironsocket_connections_accepted_total{listener="db"}': 0,
      ironsocket_connections_accepted_total: 5,
    });
    assert.deepEqual(of('ironsocket_connections'), {
      'ironsocket_connections{listener="web",mode="kernel"}': 0,
      'ironsocket_connections{listener="db",mode="kernel"}': 0,
      'ironsocket_connections{listener="web",mode="user"}': 1,
      'ironsocket_connections{listener="db",mode="user"}': 0,
      'ironsocket_connections{mode="user"}': 1,
    });
    assert.equal(series['ironsocket_connections_total{listener="web",mode="user"}'], 3);
    assert.equal(series['ironsocket_connections_total{mode="user"}'], 4);
    assert.equal(series['ironsocket_connections_closed_total{listener="web"}'], 2);
    assert.equal(series['ironsocket_connections_closed_by_cause_total{cause="completed",listener="web"}'], 2);
    assert.equal(series['ironsocket_connections_closed_by_cause_total{cause="completed",listener="db"}'], 0);
    assert.equal(series['ironsocket_connections_closed_by_cause_total{cause="completed"}'], 3);
    assert.equal(series['ironsocket_connections_closed_by_cause_total{cause="idle_timeout"}'], undefined, 'no unlabelled zero beside labelled series');
    assert.deepEqual(of('ironsocket_bytes_total'), {
      'ironsocket_bytes_total{direction="in",listener="web"}': 550,
      'ironsocket_bytes_total{direction="in",listener="db"}': 0,
      'ironsocket_bytes_total{direction="in"}': 450,
      'ironsocket_bytes_total{direction="out",listener="web"}': 55,
      'ironsocket_bytes_total{direction="out",listener="db"}': 0,
      'ironsocket_bytes_total{direction="out"}': 45,
    });
    assert.equal(series['ironsocket_handshakes_total{result="ok"}'], 0, 'handshake families keep no listener label');
  });

  it('exports counters without a dedicated family as ironsocket_<name>_total, never clashing with a fixed family', async () => {
    const m = createMetrics(() => base({ counters: { relay_stalls: 4, 'odd-name.x': 2, connections: 7, backend_slow: 1, handshake_failed_quantum: 8 } }), {
      tlsStatPath: noTlsStat,
    });
    const text = await m.render();
    const series = await scrape(async () => text);
    assert.equal(series.ironsocket_relay_stalls_total, 4);
    assert.equal(series.ironsocket_odd_name_x_total, 2);
    assert.equal(series.ironsocket_counter_connections_total, 7, 'a name that would reuse ironsocket_connections_total is moved aside');
    assert.equal(series.ironsocket_backend_slow_total, 1, 'backend_<x> with an unknown x is not taken for a backend error reason');
    assert.equal(
      series.ironsocket_handshake_failed_quantum_total,
      8,
      'a reason this image does not enumerate is exported as it is, never parsed into the family',
    );
    assert.equal(series['ironsocket_handshakes_failed_total{reason="quantum"}'], undefined);
    assert.equal(series['ironsocket_handshakes_total{result="failed"}'], 0);
    assert.equal(series['ironsocket_handshakes_failed_total{reason="client_cert_revoked"}'], 0, 'every enumerated reason has its series from the start');
    assert.equal(parsePromText(text).get('ironsocket_relay_stalls_total')?.type, 'counter');
    assert.match(parsePromText(text).get('ironsocket_relay_stalls_total')?.help ?? '', /"relay_stalls"/);
  });

  it('takes one snapshot per scrape and follows it as it changes, continuing from the counters an upgrade carried', async () => {
    let calls = 0;
    let state = base({ counters: { connections_accepted: 10, handshakes_ok: 9, handshake_failed_tls: 1 }, live: { kernel: 4, user: 0 } });
    const first = createMetrics(
      () => {
        calls++;
        return state;
      },
      { tlsStatPath: noTlsStat },
    );
    let s = await scrape(first.render);
    assert.equal(calls, 1, 'one snapshot for the whole scrape');
    assert.equal(s.ironsocket_connections_accepted_total, 10);
    assert.equal(s.ironsocket_upgrade_last_stall_seconds, undefined, 'no upgrade yet: no stall series');

    state = { ...state, counters: { ...state.counters, connections_accepted: 12, handshakes_ok: 11 }, live: { kernel: 2, user: 1 } };
    s = await scrape(first.render);
    assert.equal(calls, 2);
    assert.equal(s.ironsocket_connections_accepted_total, 12);
    assert.equal(s['ironsocket_connections{mode="kernel"}'], 2, 'a gauge that went down follows the snapshot');

    // The new image: a fresh registry, fed the counters carried across exec plus what happened since.
    const carried = { ...state.counters, upgrades: 1, connections_accepted: 13 };
    const second = createMetrics(async () => base({ counters: carried, upgrade: { generation: 2, lastStallMs: 40, lastMoved: 3, lastOk: true } }), {
      tlsStatPath: noTlsStat,
    });
    s = await scrape(second.render);
    assert.equal(s.ironsocket_connections_accepted_total, 13, 'continues from 12, does not restart at 1');
    assert.equal(s['ironsocket_handshakes_total{result="ok"}'], 11);
    assert.equal(s['ironsocket_handshakes_failed_total{reason="tls"}'], 1);
    assert.equal(s.ironsocket_upgrades_total, 1);
    assert.equal(s.ironsocket_generation, 2);
    assert.equal(s.ironsocket_upgrade_last_stall_seconds, 0.04);
  });

  it('keeps concurrent scrapes apart: each renders only its own snapshot', async () => {
    let k = 0;
    const m = createMetrics(
      async () => {
        const n = ++k;
        await new Promise((r) => setTimeout(r, n === 1 ? 30 : 0)); // the first scrape's snapshot arrives last
        return base({ counters: { connections_accepted: n, mystery: n }, bytes: { in: n, out: n }, listeners: n });
      },
      { tlsStatPath: noTlsStat },
    );
    const [a, b] = await Promise.all([scrape(m.render), scrape(m.render)]);
    for (const [s, n] of [
      [a, 1],
      [b, 2],
    ] as const) {
      assert.deepEqual(
        [s.ironsocket_connections_accepted_total, s.ironsocket_mystery_total, s['ironsocket_bytes_total{direction="in"}'], s.ironsocket_listeners],
        [n, n, n, n],
      );
    }
  });

  it('shows each /proc/net/tls_stat line as ironsocket_ktls_stat{counter}, and no samples when the file is absent', async () => {
    const names = ['TlsCurrTxSw', 'TlsCurrRxSw', 'TlsCurrTxDevice', 'TlsCurrRxDevice', 'TlsTxSw', 'TlsRxSw', 'TlsDecryptError', 'TlsRxNoPadViolation'];
    const fixture = join(dir, 'tls_stat');
    // The kernel prints each counter as "%-32s\t%lu\n".
    await writeFile(fixture, names.map((n, i) => `${n.padEnd(32)}\t${i * 10}\n`).join(''));
    const withFile = parsePromText(await createMetrics(() => base(), { tlsStatPath: fixture }).render()).get('ironsocket_ktls_stat');
    assert.equal(withFile?.type, 'gauge');
    assert.deepEqual(
      withFile?.samples.map((s) => [s.labels.counter, s.value]),
      names.map((n, i) => [n, i * 10]),
    );
    const without = parsePromText(await createMetrics(() => base(), { tlsStatPath: noTlsStat }).render()).get('ironsocket_ktls_stat');
    assert.ok(without, 'the family is still declared');
    assert.deepEqual(without.samples, []);
  });

  it('adds process metrics to its own registry and leaves the global one empty', async () => {
    const families = parsePromText(await createMetrics(() => base(), { tlsStatPath: noTlsStat }).render());
    for (const name of ['process_resident_memory_bytes', 'process_open_fds', 'process_cpu_seconds_total']) {
      assert.ok((families.get(name)?.samples.length ?? 0) > 0, `${name} present`);
    }
    assert.deepEqual(globalRegistry.getMetricsAsArray(), []);
  });

  it('rejects the scrape when the snapshot throws', async () => {
    const m = createMetrics(
      () => {
        throw new Error('relay gone');
      },
      { tlsStatPath: noTlsStat },
    );
    await assert.rejects(m.render(), /relay gone/);
    await assert.rejects(m.registry.metrics(), /relay gone/);
  });
});
