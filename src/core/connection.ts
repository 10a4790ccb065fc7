// One relayed connection, one name per part (info, snapshot, record state and mode, half-close, close cause): shared from the edge to the fd store.

/** A relayed connection's identity: who, what and since when (status, logs, the upgrade and the fd-store record carry it). */
export interface ConnectionInfo {
  id: string;
  client: string;
  backend: string;
  version: 'TLSv1.2' | 'TLSv1.3';
  cipher: string;
  mode: 'kernel' | 'user';
  startedAt: number;
  /** The listener that accepted it (its name). */
  listener?: string;
  sni?: string;
  alpn?: string;
  /** The verified client certificate's subject (mTLS). */
  clientSubject?: string;
}

/** Everything about a connection's relaying except its fds and client record state: what an upgrade carries. */
export interface ConnectionSnapshot {
  info: ConnectionInfo;
  bytesIn: number;
  bytesOut: number;
  c2b?: Uint8Array;
  b2c?: Uint8Array;
  flags: { clientEof: boolean; backendShut: boolean; backendEof: boolean; clientShut: boolean; closeNotifySent: boolean };
}

/** Half-close progress of one connection, per direction; each only moves forward (in memory: Pair keeps this). */
export interface HalfClose {
  /** Client → backend: `eof` once the client's close_notify is read (or reading it given up), `shut` once FIN went to the backend. */
  up: 'open' | 'eof' | 'shut';
  /** Backend → client: `eof` once the backend's FIN is read, `notified` once close_notify went to the client, `shut` once FIN did. */
  down: 'open' | 'eof' | 'notified' | 'shut';
}

/** The half-close state as it is carried (upgrade hand-off, fd-store record): five flags, unchanged on the wire. */
export type HalfCloseFlags = ConnectionSnapshot['flags'];

export function halfCloseOf(f: HalfCloseFlags): HalfClose {
  return {
    up: f.backendShut ? 'shut' : f.clientEof ? 'eof' : 'open',
    down: f.clientShut ? 'shut' : f.closeNotifySent ? 'notified' : f.backendEof ? 'eof' : 'open',
  };
}

export function halfCloseFlags(h: HalfClose): HalfCloseFlags {
  return {
    clientEof: h.up !== 'open',
    backendShut: h.up === 'shut',
    backendEof: h.down !== 'open',
    clientShut: h.down === 'shut',
    closeNotifySent: h.down === 'notified' || h.down === 'shut',
  };
}

/** Record state for a `user`-mode connection (the only case where keys cross to the worker, in memory). */
export interface UserState {
  suite: string;
  version: 'TLSv1.2' | 'TLSv1.3';
  tx: { key: Uint8Array; iv: Uint8Array; seq: bigint };
  rx: { key: Uint8Array; iv: Uint8Array; seq: bigint };
  secrets?: { client: Uint8Array; server: Uint8Array };
  inbox?: Uint8Array;
  plain?: Uint8Array;
  out?: Uint8Array;
  /** A post-handshake message received in part. */
  handshake?: Uint8Array;
}

/**
 * Who protects a connection's client-side TLS records: the kernel (kTLS), or this process with the record state it
 * holds. A user-mode connection without its record state cannot be written down.
 */
export type ClientRecords = { mode: 'kernel' } | { mode: 'user'; state: UserState };

/**
 * The relay's one check that a connection's label (`info.mode`: status, logs, the fd-store record) says who really
 * protects its records; every way into the relay (edge, upgrade, crash restore, another loop) passes here.
 */
export function assertAgreeingMode(info: ConnectionInfo, records: ClientRecords): void {
  if (info.mode !== records.mode) throw new Error(`connection ${info.id}: labelled ${info.mode} mode but its records are in ${records.mode} mode`);
}

/**
 * Why a relayed connection ended, counted as `closed_<cause>`: completed (both sides closed in order),
 * client_truncated (TCP FIN without close_notify), client_alert (the client sent a fatal alert), protocol_error
 * (the client broke TLS after the handshake and got an alert: bad record, renegotiation, ...), client_error /
 * backend_error (that socket failed: reset, ...), idle_timeout, shutdown, restore_failed (an upgrade, or a restart
 * from the fd store, could not restore it), not_resumable (found in the fd store after a crash, but in user mode: its
 * record state died with the process).
 */
export type CloseCause =
  | 'completed'
  | 'client_truncated'
  | 'client_alert'
  | 'protocol_error'
  | 'client_error'
  | 'backend_error'
  | 'idle_timeout'
  | 'shutdown'
  | 'restore_failed'
  | 'not_resumable';
