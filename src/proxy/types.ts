// Shared shapes passed between the proxy core, the admin socket and the CLI.

export type KtlsPolicy = 'auto' | 'require' | 'off';

/** Fully resolved configuration the proxy runs with (config file + flags + defaults). */
export interface ProxyConfig {
  listen: { host: string; port: number };
  backend: { host: string; port: number };
  certFile: string;
  keyFile: string;
  ktls: KtlsPolicy;
  adminSocket: string;
  /** Milliseconds. */
  handshakeTimeoutMs: number;
  backendConnectTimeoutMs: number;
  /** 0 disables the idle timeout. */
  idleTimeoutMs: number;
  maxConnections: number;
  /** Handshake worker threads, and as many relay worker threads; default: one per CPU. */
  workers: number;
  logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
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

export interface ConnectionStatus {
  id: string;
  client: string;
  backend: string;
  version: TlsVersionName;
  cipher: string;
  mode: ConnectionMode;
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
  backend: string;
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
  /** KiB: the process's resident memory, and the JavaScript heap in use on each relay worker thread (index = worker). */
  memory?: { rssKiB: number; relayHeapKiB: number[] };
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
  /** Connections that ended on their own while the upgrade bridge held them. */
  closedDuringUpgrade?: number;
}
