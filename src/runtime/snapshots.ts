// What `ironsocket status` and a /metrics scrape read of the running server: its state, live connections and their bytes, counters in total and per listener.
import type { ConnectionInfo } from '../core/connection.js';
import type { KtlsSupport, ProxyConfig, ReloadOutcome, StatusSnapshot, UpgradeRecord } from '../core/types.js';
import type { HandshakeListener } from '../edge/listener-setup.js';
import type { SourceCounts } from '../edge/per-source.js';
import type { SessionTickets } from '../edge/session-tickets.js';
import { formatEndpoint } from '../kernel/sockaddr.js';
import type { ListenerMetrics, MetricsSnapshot } from '../metrics/metrics.js';
import type { Relay } from '../relay/relay.js';
import { packageVersion } from '../core/version.js';

type Limits = 'ktls' | 'maxConnections' | 'maxConnectionsPerSource' | 'maxHandshakesPerSource' | 'idleTimeoutMs';

/** What the snapshots read of the server (runtime/server.ts's ProxyServer is one). */
export interface SnapshotSource {
  readonly deps: {
    readonly relay: Pick<Relay, 'stats' | 'shardCount' | 'heapUsed'>;
    readonly support: KtlsSupport;
    readonly config: Pick<ProxyConfig, Limits>;
    readonly tickets: Pick<SessionTickets, 'status'>;
  };
  readonly counters: Readonly<Record<string, number>>;
  readonly listenerCounters: ReadonlyMap<string, Readonly<Record<string, number>>>;
  readonly live: ReadonlyMap<string, ConnectionInfo>;
  readonly inFlight: ReadonlySet<string>;
  readonly sources: Pick<SourceCounts, 'sources' | 'busiest'>;
  /** What each listener serves, in the order of `listeners`. */
  readonly served: readonly HandshakeListener[];
  readonly listeners: readonly { readonly address: string }[];
  readonly generation: number;
  readonly startedAt: string;
  readonly lastUpgrade: UpgradeRecord | undefined;
  readonly lastReload: ReloadOutcome | undefined;
}

export async function statusSnapshot(server: SnapshotSource): Promise<StatusSnapshot & { generation: number; lastUpgrade?: UpgradeRecord }> {
  const { relay, config } = server.deps;
  // A busy relay (e.g. just after exec, taking over thousands of connections) must not make status fail:
  // report the connections without their byte counts rather than nothing.
  const relayed = await relay.stats(10_000).catch(() => undefined);
  const stats = new Map((relayed ?? []).map((s) => [s.id, s]));
  const now = Date.now();
  return {
    pid: process.pid,
    version: packageVersion(),
    startedAt: server.startedAt,
    generation: server.generation,
    lastUpgrade: server.lastUpgrade,
    lastReload: server.lastReload,
    ktls: { ...server.deps.support, policy: config.ktls },
    listeners: server.listeners.map((l, i) => {
      const served = server.served[i];
      return {
        address: l.address,
        name: served?.name ?? l.address,
        backend: (served?.backends ?? []).map(formatEndpoint).join(', '),
        names: served?.groups.flatMap((g) => g.names) ?? [],
        alpn: served?.alpn ?? [],
        clientAuth: served?.clientAuth ?? 'off',
        proxyProtocol: served?.proxyProtocol ?? 'off',
      };
    }),
    workers: relay.shardCount,
    connections: [...server.live.values()].map((c) => ({
      id: c.id,
      client: c.client,
      backend: c.backend,
      version: c.version,
      cipher: c.cipher,
      mode: c.mode,
      bytesIn: stats.get(c.id)?.bytesIn ?? 0,
      bytesOut: stats.get(c.id)?.bytesOut ?? 0,
      ageMs: now - c.startedAt,
      worker: stats.get(c.id)?.worker,
      listener: c.listener,
      sni: c.sni,
      alpn: c.alpn,
      clientSubject: c.clientSubject,
    })),
    tickets: server.deps.tickets.status(),
    memory: { rssKiB: Math.round(process.memoryUsage.rss() / 1024), relayHeapKiB: relay.heapUsed().map((b) => Math.round(b / 1024)) },
    counters: {
      ...server.counters,
      connections_live: server.live.size,
      handshakes_in_progress: server.inFlight.size,
      relay_stats_unavailable: relayed ? 0 : 1,
    },
    limits: {
      maxConnections: config.maxConnections,
      maxConnectionsPerSource: config.maxConnectionsPerSource,
      maxHandshakesPerSource: config.maxHandshakesPerSource,
      idleTimeoutMs: config.idleTimeoutMs,
      sources: server.sources.sources,
      busiest: server.sources.busiest(5),
    },
  };
}

/** Carried counters plus the live connections' bytes, in total and per listener (a scrape fails rather than report less). */
export async function metricsSnapshot(server: SnapshotSource): Promise<MetricsSnapshot> {
  const stats = await server.deps.relay.stats(5000);
  const live = { kernel: 0, user: 0 };
  const bytes = { in: server.counters.bytes_in ?? 0, out: server.counters.bytes_out ?? 0 };
  // Per listener: every one served now (zeros until it has connections), and every one counted for since the first image.
  const byListener = new Map<string, ListenerMetrics>();
  const of = (name: string): ListenerMetrics => {
    let l = byListener.get(name);
    if (!l) {
      const c = server.listenerCounters.get(name) ?? {};
      l = { name, counters: { ...c }, live: { kernel: 0, user: 0 }, bytes: { in: c.bytes_in ?? 0, out: c.bytes_out ?? 0 } };
      byListener.set(name, l);
    }
    return l;
  };
  for (const l of server.served) of(l.name);
  for (const name of server.listenerCounters.keys()) of(name);
  for (const c of server.live.values()) {
    live[c.mode]++;
    if (c.listener !== undefined) of(c.listener).live[c.mode]++;
  }
  for (const s of stats) {
    const c = server.live.get(s.id);
    if (!c) continue; // closed meanwhile: already in the counters
    bytes.in += s.bytesIn;
    bytes.out += s.bytesOut;
    if (c.listener === undefined) continue;
    of(c.listener).bytes.in += s.bytesIn;
    of(c.listener).bytes.out += s.bytesOut;
  }
  const u = server.lastUpgrade;
  return {
    counters: { ...server.counters },
    live,
    handshakesInProgress: server.inFlight.size,
    sources: server.sources.sources,
    bytes,
    byListener: [...byListener.values()],
    upgrade: { generation: server.generation, lastStallMs: u?.stallMs, lastMoved: u?.moved, lastOk: u?.ok },
    listeners: server.listeners.length,
  };
}
