// Runs one server handshake with libssl over a record-exact raw fd and leaves behind keys + exact sequence numbers.
import { deriveDirectionKeys, type SessionSecrets, type TrafficKeys } from '../record/keys.js';
import { suiteByName, type CipherSuite } from '../record/suites.js';
import type { Poller } from '../kernel/poller.js';
import { ClientHelloGatherer, offersEarlyData } from './hello.js';
import { RawRecordSocket, RawSocketError, RECORD_HEADER } from './raw-socket.js';
import type { LibsslHandshake, LibsslServer, LibsslStep } from './libssl.js';
import type { ClientCertificate } from './client-certificate.js';
import type { HandshakeFailure } from '../core/counters.js';

const CCS = 20;
const APPDATA = 23;
/** How long a failed handshake's alert may take to reach the kernel before the fd is given back anyway. */
const ALERT_FLUSH_MS = 200;

/** Everything the next stage needs to carry the session on without OpenSSL. */
export interface EstablishedSession {
  fd: number;
  version: 'TLSv1.2' | 'TLSv1.3';
  suite: CipherSuite;
  servername?: string;
  alpn?: string;
  /** Resumed from a session ticket (an abbreviated handshake): no certificate was sent, no key exchanged anew in TLS 1.2. */
  resumed: boolean;
  /** The client's certificate, when one was requested and sent. */
  clientCert?: ClientCertificate;
  /** Keys for what we send, and the sequence number of our next record. */
  tx: TrafficKeys & { seq: bigint };
  /** Keys for what the client sends, and the sequence number of its next record. */
  rx: TrafficKeys & { seq: bigint };
  /** TLS 1.3 traffic secrets, kept only when the caller asked (KeyUpdate needs them). */
  secrets?: { client: Buffer; server: Buffer };
  /** Zero every key and secret held here. */
  wipe(): void;
}

export class HandshakeError extends Error {
  constructor(
    message: string,
    readonly reason: HandshakeFailure,
  ) {
    super(message);
  }
}

export interface HandshakeOptions {
  poller: Poller;
  /** The listener's default certificate (served without SNI or for an unknown name), its versions, ciphers, ALPN, client CA, tickets. */
  server: LibsslServer;
  /** Picks the server (certificate) for the client's SNI. */
  sni?: (servername: string) => LibsslServer;
  timeoutMs: number;
  keepTrafficSecrets?: boolean;
  /** Aborting fails the handshake at once (an upgrade that could not wait for it). */
  signal?: AbortSignal;
  /** Hears each key log line before it is parsed and zeroed: only the IRONSOCKET_KEYLOG_FILE debug switch sets it. */
  keylog?: (line: Buffer) => void;
  /**
   * Called once, as the ClientHello goes to OpenSSL, when it offers 0-RTT early data. Early data is never accepted
   * (OpenSSL's max_early_data stays 0): OpenSSL skips the 0-RTT records it cannot decrypt and the handshake goes on in 1-RTT.
   */
  onEarlyData?: () => void;
}

/**
 * Performs the handshake on `fd` (non-blocking, not known to libuv), feeding OpenSSL exactly one record at a time.
 * Resolves when the handshake is complete and every byte OpenSSL produced is in the kernel; the fd is then ours again,
 * positioned exactly after the client's Finished. On failure the fd is NOT closed (the caller owns it), but any alert
 * OpenSSL produced has been flushed when possible.
 */
export function handshake(fd: number, opts: HandshakeOptions): Promise<EstablishedSession> {
  return new Promise((resolve, reject) => {
    let hs: LibsslHandshake;
    try {
      hs = opts.server.accept({ sni: opts.sni, keylog: opts.keylog });
    } catch (e) {
      return reject(new HandshakeError(`cannot start a handshake: ${(e as Error).message}`, 'internal'));
    }
    /** Record types we sent, and those the client sent (TLS 1.2 counts the records after each side's ChangeCipherSpec). */
    const sent: number[] = [];
    const inbound: number[] = [];
    const hello = new ClientHelloGatherer();
    let clientHelloSeen = false;
    let finished = false;

    let raw: RawRecordSocket;
    try {
      raw = new RawRecordSocket(fd, opts.poller, (e: RawSocketError) => {
        if (e.kind === 'malformed' && e.alert !== undefined && !clientHelloSeen) {
          // Nothing encrypted yet: a plaintext fatal alert is the right answer.
          return flushThenFail(Buffer.from([21, 3, 1, 0, 2, 2, e.alert]), new HandshakeError(e.message, 'malformed'));
        }
        fail(new HandshakeError(e.message, e.kind === 'eof' ? 'client-closed' : e.kind === 'io' ? 'io' : 'malformed'));
      });
    } catch (e) {
      hs.free();
      return reject(new HandshakeError(`cannot watch the client socket: ${(e as Error).message}`, 'internal'));
    }
    const timer = setTimeout(() => fail(new HandshakeError(`handshake not finished after ${opts.timeoutMs} ms`, 'timeout')), opts.timeoutMs);
    const onAbort = () => fail(new HandshakeError(`handshake aborted: ${String(opts.signal?.reason ?? 'aborted')}`, 'aborted'));
    if (opts.signal?.aborted) queueMicrotask(onAbort);
    else opts.signal?.addEventListener('abort', onAbort, { once: true });

    const next = () => raw.readRecord(onRecord);
    next();

    function onRecord(record: Buffer): void {
      if (finished) return;
      clientHelloSeen = true;
      const clientHello = hello.push(record);
      if (clientHello && offersEarlyData(clientHello)) opts.onEarlyData?.();
      inbound.push(record[0]!);
      let step: LibsslStep;
      try {
        step = hs.feed(record);
      } catch (e) {
        return fail(new HandshakeError(`OpenSSL: ${(e as Error).message}`, 'internal'));
      }
      const flight = recordTypes(step.output);
      if (!flight) return fail(new HandshakeError('OpenSSL wrote a partial record', 'internal'));
      sent.push(...flight);
      if (step.state === 'failed') return flushThenFail(step.output, new HandshakeError(`TLS handshake failed: ${step.reason}`, 'tls'));
      if (step.output.length > 0) raw.write(step.output);
      if (step.state === 'continue') return next();
      // Established: what OpenSSL wrote after the client's Finished (TLS 1.3 tickets) must be in the kernel before the keys move on.
      raw.write(Buffer.alloc(0), () => {
        if (finished) return;
        let session: EstablishedSession;
        try {
          session = settle(flight);
        } catch (e) {
          return fail(e instanceof HandshakeError ? e : new HandshakeError((e as Error).message, 'internal'));
        }
        finish();
        resolve(session);
      });
    }

    /** Sends `alert` (may be empty), then fails; gives up waiting for the client to take it after ALERT_FLUSH_MS. */
    function flushThenFail(alert: Buffer, e: HandshakeError): void {
      raw.write(alert, () => fail(e));
      setTimeout(() => fail(e), ALERT_FLUSH_MS).unref();
    }

    /** Stops every timer and callback and frees OpenSSL's SSL object (SSL_free cleanses the session's secrets). */
    function finish(): void {
      finished = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      raw.detach();
      hs.free();
    }

    function fail(e: HandshakeError): void {
      if (finished) return;
      finish();
      reject(e);
    }

    /** `lastFlight`: the record types OpenSSL wrote after taking the client's Finished. */
    function settle(lastFlight: number[]): EstablishedSession {
      const version = hs.version;
      const cipher = hs.cipher;
      if (version === undefined) throw new HandshakeError('negotiated a version that cannot be carried', 'unsupported-suite');
      const suite = cipher ? suiteByName(cipher, version) : undefined;
      if (!suite) throw new HandshakeError(`negotiated ${cipher}, which cannot be carried`, 'unsupported-suite');
      let secrets: SessionSecrets;
      const logged = hs.secrets;
      if (version === 'TLSv1.3') {
        const c = logged.clientTrafficSecret0;
        const s = logged.serverTrafficSecret0;
        if (!c || !s) throw new HandshakeError('TLS 1.3 traffic secrets were not logged', 'internal');
        secrets = { version, clientTrafficSecret: c, serverTrafficSecret: s };
      } else {
        if (!logged.masterSecret || !logged.clientRandom) throw new HandshakeError('TLS 1.2 master secret not logged', 'internal');
        secrets = { version, masterSecret: logged.masterSecret, clientRandom: logged.clientRandom, serverRandom: hs.serverRandom };
      }
      // TLS 1.3: what we sent under the application key is exactly what OpenSSL wrote after the client's Finished went in
      // (tickets): counted, never assumed. TLS 1.2: our records after our ChangeCipherSpec.
      if (version === 'TLSv1.3' && lastFlight.some((t) => t !== APPDATA))
        throw new HandshakeError(`OpenSSL wrote record types ${lastFlight.join(',')} after the client's Finished`, 'internal');
      const txSeq = version === 'TLSv1.2' ? afterLast(sent, CCS) : lastFlight.length;
      // TLS 1.2: the client's Finished is its first protected record; TLS 1.3: we stopped right at its Finished.
      const rxSeq = version === 'TLSv1.2' ? afterLast(inbound, CCS) : 0;
      // Its Finished may come in fragments (legal): the count of records it took is the next sequence number.
      if (version === 'TLSv1.2' && rxSeq < 1) throw new HandshakeError('no client record after ChangeCipherSpec', 'internal');
      const clientCert = opts.server.requestsCertificate ? hs.clientCertificate : undefined;
      const { servername, alpn, resumed } = hs;
      // Nothing below throws: the keys are derived last, and owned by the session from here.
      const keys = deriveDirectionKeys(suite, secrets);
      const kept =
        version === 'TLSv1.3' && opts.keepTrafficSecrets
          ? { client: Buffer.from(logged.clientTrafficSecret0!), server: Buffer.from(logged.serverTrafficSecret0!) }
          : undefined;
      const session: EstablishedSession = {
        fd,
        version,
        suite,
        servername,
        alpn,
        resumed,
        clientCert,
        tx: { ...keys.tx, seq: BigInt(txSeq) },
        rx: { ...keys.rx, seq: BigInt(rxSeq) },
        secrets: kept,
        wipe() {
          for (const b of [session.tx.key, session.tx.iv, session.rx.key, session.rx.iv]) b.fill(0);
          if (session.secrets) {
            session.secrets.client.fill(0);
            session.secrets.server.fill(0);
          }
        },
      };
      return session;
    }
  });
}

/** The record types of `output`, which must be whole records; undefined when it ends inside one. */
function recordTypes(output: Buffer): number[] | undefined {
  const types: number[] = [];
  let at = 0;
  while (at + RECORD_HEADER <= output.length) {
    types.push(output[at]!);
    at += RECORD_HEADER + output.readUInt16BE(at + 3);
  }
  return at === output.length ? types : undefined;
}

/** Records after the last occurrence of `type` (e.g. protected records after ChangeCipherSpec). */
function afterLast(types: number[], type: number): number {
  const i = types.lastIndexOf(type);
  if (i < 0) throw new HandshakeError('no ChangeCipherSpec seen in a TLS 1.2 handshake', 'internal');
  return types.length - i - 1;
}
