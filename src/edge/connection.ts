// One client's path through the proxy: handshake → backend → kernel TLS install → relay, with a reason logged for every exit.
import type { Logger } from '../core/log.js';
import { handshake, HandshakeError, type EstablishedSession } from '../handshake/session.js';
import type { CertSelector } from '../handshake/sni.js';
import type { LibsslServer } from '../handshake/libssl.js';
import { KtlsInstallError, installKtls } from '../kernel/ktls.js';
import { IPPROTO_TCP, TCP_NODELAY, sys } from '../kernel/libc.js';
import type { Poller } from '../kernel/poller.js';
import { decodeSockaddr, formatEndpoint, type Endpoint } from '../kernel/sockaddr.js';
import { Alert, RecordProtection } from '../record/aead.js';
import { NoteLimiter } from '../relay/budget.js';
import type { Relay } from '../relay/relay.js';
import { ownedCopy } from '../relay/protocol.js';
import { BackendError, connectBackend } from './backend.js';
import type { BackendPool } from './backend-pool.js';
import { buildPreamble, writeAll } from './backend-preamble.js';
import { lingeringClose } from './linger.js';
import type { KtlsPolicy, ProxyProtocolVersion } from '../core/types.js';
import type { ClientRecords, ConnectionInfo, UserState } from '../core/connection.js';
import { counter, type ClientCertRefusal, type CounterName } from '../core/counters.js';

/** A listener as one handshake worker runs it: its SNI table, ALPN list, client auth and backend pools. */
export interface ListenerRuntime {
  name: string;
  /** The listener's certificates by server name, each with the listener's versions, ciphers, ALPN, client CA and tickets. */
  selector: CertSelector<LibsslServer>;
  alpn: string[];
  clientAuth?: 'require' | 'optional';
  pool: BackendPool;
  /** Backends by negotiated ALPN protocol (connections without a route use `pool`). */
  routes: Map<string, BackendPool>;
  proxyProtocol: ProxyProtocolVersion;
  transparent: boolean;
  /** Log lines about refused client certificates, rate-limited per reason: a hostile client can repeat them. */
  certNotes?: Map<string, NoteLimiter>;
}

export interface ConnectionContext {
  poller: Poller;
  relay: Pick<Relay, 'add'>;
  logger: Logger;
  /** Which handshake worker runs this (in the `established` line). */
  worker?: number;
  policy: KtlsPolicy;
  /** Suites (OpenSSL names) the kernel accepted at start-up. */
  kernelSuites: Set<string>;
  handshakeTimeoutMs: number;
  backendConnectTimeoutMs: number;
  count(name: CounterName): void;
  /** Aborted when an upgrade cannot wait for this connection's handshake. */
  signalFor(id: string): AbortSignal | undefined;
  /** A connection reached the relay. */
  established(c: ConnectionInfo): void;
  /** A connection that never reached the relay is gone. */
  gone(id: string): void;
  /** Appends each handshake's key log lines to the IRONSOCKET_KEYLOG_FILE file; unset (the default), nothing is logged. */
  keylog?: (line: Buffer) => void;
}

/** Sends a fatal alert protected with the session's TX keys (the kernel does not have them yet). */
function userspaceAlert(fd: number, s: EstablishedSession, desc: number): void {
  const prot = new RecordProtection(s.suite, s.tx.key, s.tx.iv, s.tx.seq);
  try {
    const rec = prot.seal(21, Buffer.from([2, desc]));
    sys.send(fd, rec, rec.length);
  } finally {
    prot.wipe();
  }
}

/** TLS alerts for client-certificate failures (RFC 8446 §6.2). */
const CERT_ALERT = {
  handshake_failure: 40,
  bad_certificate: 42,
  certificate_revoked: 44,
  certificate_expired: 45,
  unknown_ca: 48,
  certificate_required: 116,
} as const;

/** Why a client certificate is refused (a counter suffix and a log line), and the alert that says so; undefined when acceptable. */
function refuseClientCert(listener: ListenerRuntime, s: EstablishedSession): { reason: ClientCertRefusal; alert: number; message: string } | undefined {
  if (!listener.clientAuth) return undefined;
  const c = s.clientCert;
  if (!c) {
    if (listener.clientAuth === 'optional') return undefined;
    const alert = s.version === 'TLSv1.3' ? CERT_ALERT.certificate_required : CERT_ALERT.handshake_failure;
    return { reason: 'client_cert_missing', alert, message: 'client sent no certificate; this listener requires one' };
  }
  if (c.verified) return undefined;
  // A certificate that was sent must verify, also when client auth is optional (as nginx's "optional"): a revoked
  // certificate is refused there too, presenting one is not the same as presenting none.
  const e = c.error ?? '';
  if (e === 'CERT_REVOKED')
    return { reason: 'client_cert_revoked', alert: CERT_ALERT.certificate_revoked, message: `client certificate "${c.subject}" is revoked (client_auth.crl)` };
  const alert = /EXPIRED|NOT_YET_VALID/.test(e)
    ? CERT_ALERT.certificate_expired
    : /ISSUER|SELF_SIGNED|UNABLE_TO_VERIFY|UNTRUSTED|UNABLE_TO_GET_CRL/.test(e)
      ? CERT_ALERT.unknown_ca
      : CERT_ALERT.bad_certificate;
  return { reason: 'client_cert_untrusted', alert, message: `client certificate "${c.subject}" not accepted: ${e}` };
}

/** Connects to the first backend of the listener (or its ALPN route) that answers; the pool learns which failed. */
async function connectSomeBackend(ctx: ConnectionContext, listener: ListenerRuntime, s: EstablishedSession, fd: number, id: string) {
  const pool = (s.alpn !== undefined && listener.routes.get(s.alpn)) || listener.pool;
  let source: Endpoint | undefined;
  if (listener.transparent) {
    const peer = decodeSockaddr(sys.getpeername(fd) ?? Buffer.alloc(0));
    if (!peer) throw new BackendError('transparent mode: the client address is gone (client disconnected)', 'error');
    source = { host: peer.host, port: 0 };
  }
  let last: BackendError | undefined;
  for (const ep of pool.candidates()) {
    try {
      const backendFd = await connectBackend(ctx.poller, ep, ctx.backendConnectTimeoutMs, ctx.signalFor(id), { source });
      pool.succeeded(ep);
      return { backendFd, backend: ep };
    } catch (e) {
      last = e instanceof BackendError ? e : new BackendError(String(e), 'error');
      ctx.count(counter.backendFailed(last.reason));
      if (ctx.signalFor(id)?.aborted) break;
      pool.failed(ep);
    }
  }
  throw last ?? new BackendError('no backend configured', 'error');
}

/** Copies the record state for the relay worker (its buffers are transferred); the caller wipes the session. */
function userState(s: EstablishedSession): UserState {
  const copy = ownedCopy;
  return {
    suite: s.suite.name,
    version: s.version,
    tx: { key: copy(s.tx.key), iv: copy(s.tx.iv), seq: s.tx.seq },
    rx: { key: copy(s.rx.key), iv: copy(s.rx.iv), seq: s.rx.seq },
    secrets: s.secrets ? { client: copy(s.secrets.client), server: copy(s.secrets.server) } : undefined,
  };
}

export async function serveConnection(ctx: ConnectionContext, listener: ListenerRuntime, fd: number, id: string): Promise<void> {
  const startedAt = Date.now();
  const client = formatEndpoint(decodeSockaddr(sys.getpeername(fd) ?? Buffer.alloc(0)));
  const log = ctx.logger.child({ conn: id, client, listener: listener.name });
  sys.setsockoptInt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  let session: EstablishedSession | undefined;
  let backendFd = -1;
  try {
    try {
      session = await handshake(fd, {
        poller: ctx.poller,
        server: listener.selector.fallback,
        sni: (name) => listener.selector.select(name),
        timeoutMs: ctx.handshakeTimeoutMs,
        signal: ctx.signalFor(id),
        // KeyUpdate in userspace needs the current traffic secrets; the kernel path wipes them once installed.
        keepTrafficSecrets: true,
        keylog: ctx.keylog,
        onEarlyData: () => {
          ctx.count('early_data_refused');
          log.info('client offered 0-RTT early data: refused, its early records are skipped unread and the handshake goes on in 1-RTT');
        },
      });
    } catch (e) {
      const he = e instanceof HandshakeError ? e : new HandshakeError(String(e), 'internal');
      ctx.count(counter.handshakeFailed(he.reason));
      log.warn({ reason: he.reason }, he.message);
      return;
    }
    const refused = refuseClientCert(listener, session);
    if (refused) {
      ctx.count(counter.handshakeFailed(refused.reason));
      userspaceAlert(fd, session, refused.alert);
      const notes = (listener.certNotes ??= new Map());
      if (!notes.has(refused.reason)) notes.set(refused.reason, new NoteLimiter());
      const line = notes.get(refused.reason)!.pass(refused.message);
      if (line !== undefined) log.warn({ reason: refused.reason, sni: session.servername, clientSubject: session.clientCert?.subject }, line);
      return;
    }
    ctx.count('handshakes_ok');
    ctx.count(counter.handshakeKind(session.resumed ? 'resumed' : 'full'));
    let mode: 'kernel' | 'user' = ctx.policy !== 'off' && ctx.kernelSuites.has(session.suite.name) ? 'kernel' : 'user';
    let backend: Endpoint;
    try {
      ({ backendFd, backend } = await connectSomeBackend(ctx, listener, session, fd, id));
    } catch (e) {
      const be = e instanceof BackendError ? e : new BackendError(String(e), 'error');
      userspaceAlert(fd, session, Alert.internal_error);
      log.warn({ reason: be.reason }, be.message);
      return;
    }
    if (listener.proxyProtocol !== 'off') {
      try {
        const header = buildPreamble(listener.proxyProtocol, {
          clientFd: fd,
          version: session.version,
          cipher: session.suite.name,
          sni: session.servername,
          alpn: session.alpn,
          clientCert: session.clientCert,
          id,
        });
        await writeAll(ctx.poller, backendFd, header, ctx.backendConnectTimeoutMs);
      } catch (e) {
        ctx.count('backend_proxy_header_failed');
        userspaceAlert(fd, session, Alert.internal_error);
        log.warn({ err: (e as Error).message }, `PROXY ${listener.proxyProtocol} header not sent, closing: ${(e as Error).message}`);
        return;
      }
    }
    if (mode === 'kernel') {
      try {
        installKtls(fd, session);
      } catch (e) {
        ctx.count('ktls_install_failed');
        const err = e as Error;
        // TCP_ULP needs an ESTABLISHED socket: a client that already sent its FIN (request, close_notify, FIN
        // in one go) cannot move into the kernel, but nothing was installed, so userspace records can carry it.
        const halfClosed = e instanceof KtlsInstallError && e.step === 'ulp' && e.code === 'ENOTCONN';
        if (!(e instanceof KtlsInstallError) || e.step !== 'ulp' || (ctx.policy === 'require' && !halfClosed)) {
          userspaceAlert(fd, session, Alert.internal_error);
          log.error({ err: err.message }, `installing kernel TLS failed, closing: ${err.message}`);
          return;
        }
        log.info(
          { err: err.message },
          halfClosed
            ? 'client already half-closed: kTLS needs an established socket; using the userspace record layer'
            : 'kernel TLS install failed; using the userspace record layer',
        );
        mode = 'user';
      }
    }
    const records: ClientRecords = mode === 'user' ? { mode, state: userState(session) } : { mode };
    const live: ConnectionInfo = {
      id,
      client,
      backend: formatEndpoint(backend),
      version: session.version,
      cipher: session.suite.name,
      mode,
      startedAt,
      listener: listener.name,
      ...(session.servername ? { sni: session.servername } : {}),
      ...(session.alpn ? { alpn: session.alpn } : {}),
      ...(session.clientCert ? { clientSubject: session.clientCert.subject } : {}),
    };
    log.info(
      {
        version: live.version,
        cipher: live.cipher,
        mode,
        backend: live.backend,
        txSeq: String(session.tx.seq),
        rxSeq: String(session.rx.seq),
        resumed: session.resumed,
        handshaker: ctx.worker,
        sni: session.servername,
        alpn: session.alpn,
        clientSubject: session.clientCert?.subject,
      },
      'established',
    );
    session.wipe();
    session = undefined;
    ctx.established(live);
    ctx.relay.add(live, fd, backendFd, records);
    fd = -1;
    backendFd = -1;
  } finally {
    session?.wipe();
    if (fd >= 0) {
      lingeringClose(ctx.poller, fd);
      ctx.gone(id);
    }
    if (backendFd >= 0) sys.close(backendFd);
  }
}
