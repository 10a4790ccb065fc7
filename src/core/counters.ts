// The proxy's counters as a typed enumeration: what the edge, runtime and upgrade count, and what metrics look up by name.
import type { CloseCause } from './connection.js';
import type { ConnectionMode } from './types.js';

/** Why a TLS handshake failed (HandshakeError's reasons). */
export const HANDSHAKE_FAILURES = ['timeout', 'client-closed', 'io', 'malformed', 'tls', 'unsupported-suite', 'internal', 'aborted'] as const;
export type HandshakeFailure = (typeof HANDSHAKE_FAILURES)[number];

/** Why a finished handshake was refused for its client certificate (mTLS listeners). */
export const CLIENT_CERT_REFUSALS = ['client_cert_missing', 'client_cert_revoked', 'client_cert_untrusted'] as const;
export type ClientCertRefusal = (typeof CLIENT_CERT_REFUSALS)[number];

/** How a successful handshake went: a full one, or one resumed from a session ticket. */
export const HANDSHAKE_KINDS = ['full', 'resumed'] as const;
export type HandshakeKind = (typeof HANDSHAKE_KINDS)[number];

/** Why a backend connect failed (BackendError's reasons). */
export const BACKEND_FAILURES = ['refused', 'timeout', 'unreachable', 'error'] as const;
export type BackendFailure = (typeof BACKEND_FAILURES)[number];

/** The per-source limit a rejected connection hit. */
export const SOURCE_LIMITS = ['connections', 'handshakes'] as const;
export type SourceLimit = (typeof SOURCE_LIMITS)[number];

export const CONNECTION_MODES = ['kernel', 'user'] as const satisfies readonly ConnectionMode[];

// Compile-time completeness: the `satisfies` fails when a cause is added to (or removed from) CloseCause.
const CAUSES = {
  completed: 1,
  client_truncated: 1,
  client_alert: 1,
  protocol_error: 1,
  client_error: 1,
  backend_error: 1,
  idle_timeout: 1,
  shutdown: 1,
  restore_failed: 1,
  not_resumable: 1,
} satisfies Record<CloseCause, 1>;
export const CLOSE_CAUSES = Object.keys(CAUSES) as CloseCause[];

/** Counters with no label, each exported as its own ironsocket_<name>_total. */
export const PLAIN_COUNTERS = [
  'connections_accepted',
  'connections_closed',
  'early_data_refused',
  'handshakes_aborted_by_upgrade',
  'ktls_install_failed',
  'upgrades',
  'upgrades_failed',
  'upgrade_restore_failed',
  'fd_store_resumed',
  'handshakes_ticket_unknown',
] as const;
export type PlainCounter = (typeof PLAIN_COUNTERS)[number];

/** Every counter the proxy keeps; labelled ones are built by the functions in `counter` below. */
export type CounterName =
  | PlainCounter
  | 'handshakes_ok'
  | `handshakes_${HandshakeKind}`
  | 'bytes_in'
  | 'bytes_out'
  | 'reloads'
  | 'reloads_failed'
  | 'backend_proxy_header_failed'
  | `handshake_failed_${HandshakeFailure | ClientCertRefusal}`
  | `backend_${BackendFailure}`
  | `connections_${ConnectionMode}`
  | `closed_${CloseCause}`
  | `rejected_per_source_${SourceLimit}`;

/** The names of the labelled counters, by label value. */
export const counter = {
  handshakeKind: (kind: HandshakeKind) => `handshakes_${kind}` as const,
  handshakeFailed: (reason: HandshakeFailure | ClientCertRefusal) => `handshake_failed_${reason}` as const,
  backendFailed: (reason: BackendFailure) => `backend_${reason}` as const,
  connections: (mode: ConnectionMode) => `connections_${mode}` as const,
  closed: (cause: CloseCause) => `closed_${cause}` as const,
  rejectedPerSource: (limit: SourceLimit) => `rejected_per_source_${limit}` as const,
};
