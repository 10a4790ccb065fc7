// Prometheus metrics derived at scrape time from the proxy's carried counters, so every series continues across in-place upgrades.
import { AsyncLocalStorage } from 'node:async_hooks';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import {
  BACKEND_FAILURES,
  CLIENT_CERT_REFUSALS,
  CLOSE_CAUSES,
  CONNECTION_MODES,
  HANDSHAKE_FAILURES,
  HANDSHAKE_KINDS,
  PLAIN_COUNTERS,
  SOURCE_LIMITS,
  counter,
  type CounterName,
  type PlainCounter,
} from '../core/counters.js';
import { TLS_STAT_PATH, readTlsStat } from './tls-stat.js';

/** One listener's share of the connection families, by its name (its `name`, else its listen address). */
export interface ListenerMetrics {
  name: string;
  /** What was counted with this listener known (accepts, connections by mode, closes by cause, bytes of closed ones). */
  counters: Record<string, number>;
  live: { kernel: number; user: number };
  /** Closed connections plus live ones. */
  bytes: { in: number; out: number };
}

export interface MetricsSnapshot {
  /** Monotonic since the first image (carried across upgrades). */
  counters: Record<string, number>;
  /** Current connections by mode. */
  live: { kernel: number; user: number };
  handshakesInProgress: number;
  /** Sources (IPv4 address, IPv6 /64) with at least one open connection. */
  sources?: number;
  /** Totals: closed connections + live ones. */
  bytes: { in: number; out: number };
  upgrade?: { generation: number; lastStallMs?: number; lastMoved?: number; lastOk?: boolean };
  listeners: number;
  /** Per listener (served now, or counted for since the first image): the families labelled `listener`. */
  byListener?: ListenerMetrics[];
}

export interface Metrics {
  registry: Registry;
  /** One scrape: takes one snapshot, registers families for counters first seen in it, and renders the text format. */
  render(): Promise<string>;
  contentType: string;
}

/** Help text of the counters exported one-to-one as `ironsocket_<name>_total` (every one of PLAIN_COUNTERS). */
const PLAIN: Record<PlainCounter, string> = {
  connections_accepted: 'Client connections taken off the listening sockets.',
  connections_closed: 'Relayed connections that have ended.',
  early_data_refused:
    'ClientHellos that offered TLS 1.3 0-RTT early data, which is always refused (the handshake goes on in 1-RTT; early bytes are never relayed).',
  handshakes_aborted_by_upgrade: 'Handshakes still in progress when an upgrade began, aborted so it could proceed.',
  ktls_install_failed: 'Handshaken connections whose kernel TLS install failed (they continue in userspace or are closed, per the ktls policy).',
  upgrades: 'In-place upgrades completed (exec into the new image with connections carried over).',
  upgrades_failed: 'In-place upgrades that did not happen or failed, leaving the running image serving.',
  upgrade_restore_failed: 'Connections an upgrade carried but the new image could not restore.',
  fd_store_resumed: 'Kernel-mode connections resumed from the systemd fd store after the proxy crashed or was killed.',
  handshakes_ticket_unknown:
    'ClientHellos offering a session ticket under a key this proxy does not have (expired past the previous key, or from elsewhere): a full handshake followed.',
};
/** Every reason a handshake fails for, each counted as its own `handshake_failed_<reason>` (no name is parsed back). */
const FAILURE_REASONS = [...HANDSHAKE_FAILURES, ...CLIENT_CERT_REFUSALS];

/** The counters that feed one of the dedicated families below, by name (everything else is exported generically). */
const MAPPED = new Set<string>([
  ...PLAIN_COUNTERS,
  'handshakes_ok',
  ...HANDSHAKE_KINDS.map(counter.handshakeKind),
  'bytes_in',
  'bytes_out',
  ...FAILURE_REASONS.map(counter.handshakeFailed),
  ...BACKEND_FAILURES.map(counter.backendFailed),
  ...CLOSE_CAUSES.map(counter.closed),
  ...SOURCE_LIMITS.map(counter.rejectedPerSource),
  ...CONNECTION_MODES.map(counter.connections),
] satisfies CounterName[]);

type Series = Array<[labels: Record<string, string>, value: number]>;

/** The families of connections, labelled by the listener that accepted them. */
const BY_LISTENER = new Set<PlainCounter>(['connections_accepted', 'connections_closed']);

/**
 * The series of one value of a family labelled `listener`: one per listener, and the part no listener was counted
 * for (by an image from before per-listener counts, or in the upgrade bridge while the image exec'd) without the label,
 * when there is some. Their sum is the process's total, `total`.
 */
function perListener(s: MetricsSnapshot, labels: Record<string, string>, total: number, of: (l: ListenerMetrics) => number): Series {
  const out: Series = [];
  let rest = total;
  for (const l of s.byListener ?? []) {
    const value = of(l);
    out.push([{ listener: l.name, ...labels }, value]);
    rest -= value;
  }
  if (rest > 0 || out.length === 0) out.push([labels, rest]);
  return out;
}

/**
 * Builds the registry. `snapshot` is called once per scrape; every value is set from it (never accumulated here),
 * so series continue from whatever counters the proxy carried across an upgrade. `tlsStatPath` defaults to
 * /proc/net/tls_stat; when that file does not exist the ironsocket_ktls_stat family has no samples.
 */
export function createMetrics(snapshot: () => MetricsSnapshot | Promise<MetricsSnapshot>, opts: { tlsStatPath?: string } = {}): Metrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const tlsStatPath = opts.tlsStatPath ?? TLS_STAT_PATH;

  // render() pins its snapshot for the collectors it runs; a bare registry.metrics() shares one in-flight snapshot.
  const scrape = new AsyncLocalStorage<MetricsSnapshot>();
  let inflight: Promise<MetricsSnapshot> | undefined;
  const current = (): MetricsSnapshot | Promise<MetricsSnapshot> =>
    scrape.getStore() ??
    (inflight ??= Promise.resolve()
      .then(snapshot)
      .finally(() => (inflight = undefined)));

  /** A family whose samples are replaced on every scrape by `series(snapshot)`; unlabelled and no series → no sample. */
  function family(type: 'counter' | 'gauge', name: string, help: string, labelNames: string[], series: (s: MetricsSnapshot) => Series | Promise<Series>) {
    async function fill(m: Counter | Gauge, s: MetricsSnapshot): Promise<void> {
      const values = await series(s);
      m.reset();
      if (labelNames.length === 0 && values.length === 0) m.remove({});
      for (const [labels, value] of values) {
        if (m instanceof Counter) m.inc(labels, value);
        else m.set(labels, value);
      }
    }
    const config = { name, help, labelNames, registers: [registry] };
    if (type === 'counter')
      return new Counter({
        ...config,
        async collect() {
          await fill(this, await current());
        },
      });
    return new Gauge({
      ...config,
      async collect() {
        await fill(this, await current());
      },
    });
  }
  const one = (value: number | undefined): Series => (value === undefined ? [] : [[{}, value]]);
  const count = (s: MetricsSnapshot, name: CounterName): number => s.counters[name] ?? 0;

  const mine = (l: ListenerMetrics, name: CounterName): number => l.counters[name] ?? 0;

  family(
    'gauge',
    'ironsocket_connections',
    'Relayed connections open now, by listener and TLS record mode (kernel: kTLS, user: records in userspace).',
    ['listener', 'mode'],
    (s) => CONNECTION_MODES.flatMap((mode) => perListener(s, { mode }, s.live[mode], (l) => l.live[mode])),
  );
  family(
    'counter',
    'ironsocket_connections_total',
    'Connections that reached the relay since the first image, by listener and TLS record mode.',
    ['listener', 'mode'],
    (s) =>
      CONNECTION_MODES.filter((mode) => counter.connections(mode) in s.counters).flatMap((mode) =>
        perListener(s, { mode }, count(s, counter.connections(mode)), (l) => mine(l, counter.connections(mode))),
      ),
  );
  family('gauge', 'ironsocket_handshakes_in_progress', 'Accepted connections still in their TLS handshake or backend connect.', [], (s) =>
    one(s.handshakesInProgress),
  );
  family(
    'counter',
    'ironsocket_handshakes_total',
    'Finished TLS handshakes since the first image (failed = sum of ironsocket_handshakes_failed_total).',
    ['result'],
    (s) => [
      [{ result: 'ok' }, count(s, 'handshakes_ok')],
      [{ result: 'failed' }, FAILURE_REASONS.reduce((n, reason) => n + count(s, counter.handshakeFailed(reason)), 0)],
    ],
  );
  family(
    'counter',
    'ironsocket_handshakes_completed_total',
    'Successful TLS handshakes since the first image, by kind: full, or resumed from a session ticket (their sum is ironsocket_handshakes_total{result="ok"} from the image that began counting kinds on).',
    ['kind'],
    (s) => HANDSHAKE_KINDS.map((kind) => [{ kind }, count(s, counter.handshakeKind(kind))]),
  );
  family('counter', 'ironsocket_handshakes_failed_total', 'TLS handshakes that failed since the first image, by reason.', ['reason'], (s) => {
    return FAILURE_REASONS.map((reason) => [{ reason }, count(s, counter.handshakeFailed(reason))]);
  });

  family('counter', 'ironsocket_backend_errors_total', 'Backend connects that failed after a successful handshake, by reason.', ['reason'], (s) =>
    BACKEND_FAILURES.map((reason) => [{ reason }, count(s, counter.backendFailed(reason))]),
  );
  family(
    'counter',
    'ironsocket_connections_closed_by_cause_total',
    'Relayed connections that have ended, by listener and why: completed, client_truncated, client_alert, protocol_error, client_error, backend_error, idle_timeout, shutdown, restore_failed, not_resumable.',
    ['listener', 'cause'],
    (s) => CLOSE_CAUSES.flatMap((cause) => perListener(s, { cause }, count(s, counter.closed(cause)), (l) => mine(l, counter.closed(cause)))),
  );
  family(
    'counter',
    'ironsocket_rejected_per_source_total',
    'Connections closed at accept, before any TLS work, because their source (IPv4 address, IPv6 /64) was at a per-source limit: connections (max_connections_per_source) or handshakes (max_handshakes_per_source).',
    ['limit'],
    (s) => SOURCE_LIMITS.map((limit) => [{ limit }, count(s, counter.rejectedPerSource(limit))]),
  );
  family('gauge', 'ironsocket_sources', 'Client sources (IPv4 address, IPv6 /64) holding at least one open connection.', [], (s) => one(s.sources));
  family(
    'counter',
    'ironsocket_bytes_total',
    'Plaintext bytes relayed (in: client to backend, out: backend to client), closed and open connections, by listener.',
    ['listener', 'direction'],
    (s) => [...perListener(s, { direction: 'in' }, s.bytes.in, (l) => l.bytes.in), ...perListener(s, { direction: 'out' }, s.bytes.out, (l) => l.bytes.out)],
  );
  for (const name of PLAIN_COUNTERS) {
    const help = `${PLAIN[name]} Counted since the first image (carried across upgrades).`;
    if (BY_LISTENER.has(name))
      family('counter', `ironsocket_${name}_total`, `${help} By listener.`, ['listener'], (s) => perListener(s, {}, count(s, name), (l) => mine(l, name)));
    else family('counter', `ironsocket_${name}_total`, help, [], (s) => one(count(s, name)));
  }
  family('gauge', 'ironsocket_listeners', 'Listening sockets the proxy accepts on.', [], (s) => one(s.listeners));
  family('gauge', 'ironsocket_generation', 'Process image generation: 1 for the first, +1 per in-place upgrade.', [], (s) => one(s.upgrade?.generation));
  family('gauge', 'ironsocket_upgrade_last_stall_seconds', 'How long relayed connections were paused during the last in-place upgrade.', [], (s) =>
    one(s.upgrade?.lastStallMs === undefined ? undefined : s.upgrade.lastStallMs / 1000),
  );
  family('gauge', 'ironsocket_upgrade_last_moved_connections', 'Connections the last upgrade carried into the new image.', [], (s) =>
    one(s.upgrade?.lastMoved),
  );
  family('gauge', 'ironsocket_upgrade_last_success', 'Whether the last upgrade attempt succeeded (1) or failed (0).', [], (s) =>
    one(s.upgrade?.lastOk === undefined ? undefined : Number(s.upgrade.lastOk)),
  );
  family(
    'gauge',
    'ironsocket_ktls_stat',
    'Kernel TLS statistics of this network namespace from /proc/net/tls_stat (TlsCurr*: sessions installed now; the rest: totals since boot).',
    ['counter'],
    async () => Object.entries((await readTlsStat(tlsStatPath)) ?? {}).map(([counter, value]) => [{ counter }, value]),
  );

  // Counters without a dedicated family: ironsocket_<name>_total, registered the first time a scrape sees them.
  const fixed = new Set(registry.getMetricsAsArray().map((m) => m.name));
  const genericName = (raw: string): string => {
    const name = `ironsocket_${raw.replace(/[^A-Za-z0-9_]/g, '_')}_total`;
    return fixed.has(name) ? `ironsocket_counter_${name.slice('ironsocket_'.length)}` : name;
  };
  function registerGeneric(counters: Record<string, number>): void {
    for (const raw of Object.keys(counters)) {
      const name = genericName(raw);
      if (MAPPED.has(raw) || registry.getSingleMetric(name)) continue;
      family('counter', name, `Proxy counter "${raw}" since the first image (no dedicated metric).`, [], (s) =>
        one(Object.keys(s.counters).reduce((n, k) => (!MAPPED.has(k) && genericName(k) === name ? n + (s.counters[k] ?? 0) : n), 0)),
      );
    }
  }

  return {
    registry,
    contentType: registry.contentType,
    async render() {
      const s = await snapshot();
      registerGeneric(s.counters);
      return scrape.run(s, () => registry.metrics());
    },
  };
}
