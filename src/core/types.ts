// Shared shapes passed between the edge, the runtime, the admin socket, metrics and the CLI (config, status, upgrade outcome).

import type { ConnectionInfo } from './connection.js';

export type KtlsPolicy = 'auto' | 'require' | 'off';

export interface HostPort {
  host: string;
  port: number;
}

/** One certificate chain and its key; `names` are the DNS names it serves (from its SANs unless configured). */
export interface CertConfig {
  certFile: string;
  keyFile: string;
  names: string[];
  /** Served when the client's SNI matches no name (or it sent none); the first pair unless one says so. */
  default: boolean;
}

/** Connections whose negotiated ALPN protocol is `alpn` go to these backends instead of the listener's. */
export interface RouteConfig {
  alpn: string;
  backends: HostPort[];
}

export type ProxyProtocolVersion = 'off' | 'v1' | 'v2';

/** One address accepting TLS, with its certificates, its backends and how it talks to them. */
export interface ListenerConfig {
  /** For logs, status and metrics: the configured name, else the listen address. */
  name: string;
  listen: HostPort;
  /** Tried in round-robin order; one that fails is skipped for `backendRetryMs`. */
  backends: HostPort[];
  certs: CertConfig[];
  /** ALPN protocols offered, in server preference order; empty: no ALPN. */
  alpn: string[];
  routes: RouteConfig[];
  /** mTLS: verify client certificates against this CA bundle; `required` refuses clients without one; `crlFile`: revoked ones. */
  clientAuth?: { caFile: string; required: boolean; crlFile?: string };
  proxyProtocol: ProxyProtocolVersion;
  /** Connect to the backend from the client's own address (IP_TRANSPARENT; needs CAP_NET_ADMIN and policy routing). */
  transparent: boolean;
}

/** Fully resolved configuration the proxy runs with (config file + flags + defaults). */
export interface ProxyConfig {
  listeners: ListenerConfig[];
  ktls: KtlsPolicy;
  adminSocket: string;
  /** Milliseconds. */
  handshakeTimeoutMs: number;
  backendConnectTimeoutMs: number;
  /** How long a backend that failed is skipped (passive health). */
  backendRetryMs: number;
  /** 0 disables the idle timeout. */
  idleTimeoutMs: number;
  maxConnections: number;
  /** Open connections (in handshake or relayed) one source may hold: an IPv4 address, an IPv6 /64; 0 = no limit. */
  maxConnectionsPerSource: number;
  /** Connections one source may have in handshake at once; 0 = no limit. */
  maxHandshakesPerSource: number;
  /** Handshake worker threads, and as many relay worker threads; default: one per CPU. */
  workers: number;
  logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
  /** Prometheus text on http://HOST:PORT/metrics when set. */
  metrics?: HostPort;
  /** Privileges to drop to once every socket is bound. */
  user?: string;
  group?: string;
  /**
   * Keep every connection's descriptors in systemd's file descriptor store (FDSTORE=1), so that
   * kernel-mode connections survive a crash of the proxy. Needs NOTIFY_SOCKET; ignored (with a warning) without it.
   */
  fdStore: boolean;
  /** TLS session tickets: one set of keys for the whole process (every handshake worker), carried across upgrades. */
  sessionTickets: SessionTicketConfig;
}

/** [session_tickets]: where the ticket keys come from and how long a ticket is good for. */
export interface SessionTicketConfig {
  /** A new key every this often (generated in memory); unused with `keyFile`, whose keys the operator rotates. */
  rotateEveryMs: number;
  /** How long a ticket resumes (the lifetime hint clients get); at most rotateEveryMs when keys rotate here. */
  lifetimeMs: number;
  /** HAProxy's tls-ticket-keys format: the last 3 keys are used, the penultimate encrypts. */
  keyFile?: string;
}

export type TlsVersionName = 'TLSv1.2' | 'TLSv1.3';
export type ConnectionMode = 'kernel' | 'user';

/** What the kernel accepted when probed at start-up. */
export interface KtlsSupport {
  available: boolean;
  /** Why kTLS is unavailable (which check failed), when it is. */
  reason?: string;
  /** OpenSSL-style suite names the kernel accepted for TX and RX, per version. */
  ciphers: { 'TLSv1.2': string[]; 'TLSv1.3': string[] };
  /** Whether TLS 1.3 KeyUpdate (re-keying an installed socket) is supported. */
  rekey: boolean;
}

/** One relayed connection as status reports it: its ConnectionInfo, with its age instead of its start, and its bytes. */
export interface ConnectionStatus extends Omit<ConnectionInfo, 'startedAt'> {
  /** Plaintext bytes received from the client (and sent to the backend). */
  bytesIn: number;
  /** Plaintext bytes received from the backend (and sent to the client). */
  bytesOut: number;
  ageMs: number;
  /** The relay worker carrying it (0-based), when it answered. */
  worker?: number;
}

export interface ListenerStatus {
  address: string;
  /** Configured name, else the listen address. */
  name?: string;
  /** Its backends, comma-separated. */
  backend: string;
  /** DNS names its certificates serve (the default's first). */
  names?: string[];
  alpn?: string[];
  clientAuth?: 'require' | 'optional' | 'off';
  proxyProtocol?: 'off' | 'v1' | 'v2';
}

export interface StatusSnapshot {
  pid: number;
  version: string;
  startedAt: string;
  ktls: KtlsSupport & { policy: KtlsPolicy };
  listeners: ListenerStatus[];
  /** Relay worker threads. */
  workers?: number;
  connections: ConnectionStatus[];
  counters: Record<string, number>;
  /** 1 for the first image, +1 for every in-place upgrade. */
  generation?: number;
  lastUpgrade?: UpgradeRecord;
  /** The outcome of the last configuration reload (SIGHUP, `ironsocket reload`). */
  lastReload?: { ok: boolean; at: string; error?: string; listeners?: string[]; needsUpgrade?: string[] };
  /** The connection limits in force, and the sources (IPv4 address, IPv6 /64) holding connections now. */
  limits?: LimitsStatus;
  /** The session ticket keys in use: where they come from, their names' first bytes (never a key), lifetime, rotation. */
  tickets?: TicketStatus;
  /** KiB: the process's resident memory, and the JavaScript heap in use on each relay worker thread (index = worker). */
  memory?: { rssKiB: number; relayHeapKiB: number[] };
}

/** What status shows of the session ticket keys: never a key, only what they are and the first bytes of each name (names travel in the clear). */
export interface TicketStatus {
  source: 'generated' | 'key_file';
  keyFile?: string;
  keys: number;
  /** Hex of the first 4 bytes of each key's name, oldest first; `encrypt` indexes it. */
  names: string[];
  encrypt: number;
  lifetimeS: number;
  rotateEveryS?: number;
  rotatedAt?: string;
}

export interface LimitsStatus {
  maxConnections: number;
  /** 0: no limit. */
  maxConnectionsPerSource: number;
  maxHandshakesPerSource: number;
  /** 0: idle connections are never closed. */
  idleTimeoutMs: number;
  /** Sources with at least one open connection. */
  sources: number;
  /** The sources with the most open connections (at most 5). */
  busiest: Array<{ source: string; connections: number; handshakes: number }>;
}

/** The outcome of the last in-place upgrade, as status reports it. */
export interface UpgradeRecord {
  attempt: string;
  ok: boolean;
  at: string;
  error?: string;
  stallMs?: number;
  moved?: number;
  failedToRestore?: number;
  /** Connections that ended on their own while the upgrade bridge held them (new clients it served included). */
  closedDuringUpgrade?: number;
  /** Of those, the ones whose close was logged as a warning (an error, a reset, a truncation), not a clean end. */
  closedDuringUpgradeWithWarning?: number;
}

/** What a hot reload (SIGHUP, `ironsocket reload`) did: status shows the last one. */
export interface ReloadOutcome {
  ok: boolean;
  at: string;
  /** Why nothing changed (bad file, certificate that does not load, address that cannot be bound). */
  error?: string;
  /** The listeners served after the reload, by name. */
  listeners?: string[];
  /** Settings that changed in the file but only take effect with an upgrade (`ironsocket upgrade`). */
  needsUpgrade?: string[];
}
