// One client's path through the proxy: handshake → backend → kernel TLS install → relay, with a reason logged for every exit.
import type tls from 'node:tls';
import type { Logger } from '../admin/log.js';
import { handshake, HandshakeError, type EstablishedSession } from '../handshake/session.js';
import { KtlsInstallError, installKtls } from '../kernel/ktls.js';
import { IPPROTO_TCP, TCP_NODELAY, sys } from '../kernel/libc.js';
import type { Poller } from '../kernel/poller.js';
import { decodeSockaddr, formatEndpoint, type Endpoint } from '../kernel/sockaddr.js';
import { Alert, RecordProtection } from '../record/aead.js';
import type { PairInfo } from '../relay/pair.js';
import type { Relay } from '../relay/relay.js';
import type { UserState } from '../relay/protocol.js';
import { BackendError, connectBackend } from './backend.js';
import { lingeringClose } from './linger.js';
import type { KtlsPolicy } from './types.js';

export interface ConnectionContext {
  poller: Poller;
  relay: Pick<Relay, 'add'>;
  logger: Logger;
  secureContext: tls.SecureContext;
  backend: Endpoint;
  policy: KtlsPolicy;
  /** Suites (OpenSSL names) the kernel accepted at start-up. */
  kernelSuites: Set<string>;
  handshakeTimeoutMs: number;
  backendConnectTimeoutMs: number;
  count(name: string): void;
  /** Aborted when an upgrade cannot wait for this connection's handshake. */
  signalFor(id: string): AbortSignal | undefined;
  /** A connection reached the relay. */
  established(c: LiveConnection): void;
  /** A connection that never reached the relay is gone. */
  gone(id: string): void;
}

/** A connection handed to the relay: what status reports about it. */
export type LiveConnection = PairInfo;

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

/** Copies the record state for the relay worker (structured clone); the caller wipes the session. */
function userState(s: EstablishedSession): UserState {
  const copy = (b: Buffer) => new Uint8Array(b);
  return {
    suite: s.suite.name,
    version: s.version,
    tx: { key: copy(s.tx.key), iv: copy(s.tx.iv), seq: s.tx.seq },
    rx: { key: copy(s.rx.key), iv: copy(s.rx.iv), seq: s.rx.seq },
    secrets: s.secrets ? { client: copy(s.secrets.client), server: copy(s.secrets.server) } : undefined,
  };
}

export async function serveConnection(ctx: ConnectionContext, fd: number, id: string): Promise<void> {
  const startedAt = Date.now();
  const client = formatEndpoint(decodeSockaddr(sys.getpeername(fd) ?? Buffer.alloc(0)));
  const log = ctx.logger.child({ conn: id, client });
  sys.setsockoptInt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  let session: EstablishedSession | undefined;
  let backendFd = -1;
  try {
    try {
      session = await handshake(fd, {
        poller: ctx.poller,
        secureContext: ctx.secureContext,
        timeoutMs: ctx.handshakeTimeoutMs,
        signal: ctx.signalFor(id),
        // KeyUpdate in userspace needs the current traffic secrets; the kernel path wipes them once installed.
        keepTrafficSecrets: true,
      });
    } catch (e) {
      const he = e instanceof HandshakeError ? e : new HandshakeError(String(e), 'internal');
      ctx.count(`handshake_failed_${he.reason}`);
      log.warn({ reason: he.reason }, he.message);
      return;
    }
    ctx.count('handshakes_ok');
    let mode: 'kernel' | 'user' = ctx.policy !== 'off' && ctx.kernelSuites.has(session.suite.name) ? 'kernel' : 'user';
    try {
      backendFd = await connectBackend(ctx.poller, ctx.backend, ctx.backendConnectTimeoutMs, ctx.signalFor(id));
    } catch (e) {
      const be = e instanceof BackendError ? e : new BackendError(String(e), 'error');
      ctx.count(`backend_${be.reason}`);
      userspaceAlert(fd, session, Alert.internal_error);
      log.warn({ reason: be.reason }, be.message);
      return;
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
    const user = mode === 'user' ? userState(session) : undefined;
    const live: LiveConnection = {
      id,
      client,
      backend: formatEndpoint(ctx.backend),
      version: session.version,
      cipher: session.suite.name,
      mode,
      startedAt,
    };
    log.info(
      { version: live.version, cipher: live.cipher, mode, txSeq: String(session.tx.seq), rxSeq: String(session.rx.seq), sni: session.servername },
      'established',
    );
    session.wipe();
    session = undefined;
    ctx.established(live);
    ctx.relay.add(live, fd, backendFd, user);
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
