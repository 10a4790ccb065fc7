// Runs one server handshake with node:tls over a record-exact raw fd and leaves behind keys + exact sequence numbers.
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { RecordProtection, RecordError } from '../record/aead.js';
import { deriveDirectionKeys, type SessionSecrets, type TrafficKeys } from '../record/keys.js';
import { suiteByName, type CipherSuite } from '../record/suites.js';
import type { Poller } from '../kernel/poller.js';
import { KeylogCollector } from './keylog.js';
import { ClientHelloGatherer, offersEarlyData, parseHello } from './hello.js';
import { RawRecordSocket, RawSocketError, RECORD_HEADER } from './raw-socket.js';
import type { HandshakeFailure } from '../core/counters.js';

const CCS = 20;
/** Event-loop turns allowed for OpenSSL's last output (tickets) to come out after the client's Finished: a few suffice. */
const MAX_DRAIN_TURNS = 100;
const APPDATA = 23;

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

/** What the handshake learned about a client certificate (verification against the listener's CA bundle). */
export interface ClientCertificate {
  verified: boolean;
  /** OpenSSL's reason when not verified, e.g. "UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "CERT_HAS_EXPIRED". */
  error?: string;
  /** The subject distinguished name on one line ("C=.., O=.., CN=.."); control characters become "?". */
  subject: string;
  subjectCN?: string;
  fingerprint256: string;
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
  secureContext: tls.SecureContext;
  timeoutMs: number;
  keepTrafficSecrets?: boolean;
  ALPNProtocols?: string[];
  /** Picks the certificate for the client's SNI (the secureContext serves clients without one). */
  SNICallback?: (servername: string) => tls.SecureContext;
  /** Ask for a client certificate (mTLS); whether it verified is reported in `clientCert`, never enforced here. */
  requestCert?: boolean;
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

/** One record seen on the wire during the handshake (server output is kept whole for sequence accounting). */
interface Seen {
  type: number;
  bytes: Buffer;
}

/**
 * Performs the handshake on `fd` (non-blocking, not known to libuv). Resolves when the handshake is
 * complete and every byte OpenSSL produced is in the kernel; the fd is then ours again, positioned
 * exactly after the client's Finished. On failure the fd is NOT closed (the caller owns it), but any
 * alert OpenSSL produced has been flushed when possible.
 */
export function handshake(fd: number, opts: HandshakeOptions): Promise<EstablishedSession> {
  return new Promise((resolve, reject) => {
    const keylog = new KeylogCollector();
    const output: Seen[] = [];
    let outPartial: Buffer = Buffer.alloc(0);
    const inbound: number[] = []; // record types fed to OpenSSL
    const hello = new ClientHelloGatherer();
    let clientHelloSeen = false;
    let finished = false;
    /** The client's Finished is in: no more input; OpenSSL's last output is being collected. */
    let sealing = false;
    /** OpenSSL's output is complete: any more would desynchronise the sequence numbers. */
    let sealed = false;
    let secure = false;
    let readRequested = false;
    let feeding = false;
    /** How many of our records were out when the client's latest record went in: what follows its Finished is ours under the application key. */
    let outputBeforeLastRecord = 0;

    const raw = new RawRecordSocket(fd, opts.poller, (e: RawSocketError) => {
      if (e.kind === 'malformed' && e.alert !== undefined && !clientHelloSeen) {
        // Nothing encrypted yet: a plaintext fatal alert is the right answer.
        raw.write(Buffer.from([21, 3, 1, 0, 2, 2, e.alert]), () => fail(new HandshakeError(e.message, 'malformed')));
        setTimeout(() => fail(new HandshakeError(e.message, 'malformed')), 200).unref();
        return;
      }
      fail(new HandshakeError(e.message, e.kind === 'eof' ? 'client-closed' : e.kind === 'io' ? 'io' : 'malformed'));
    });

    const transport = new Duplex({
      read() {
        readRequested = true;
        feed();
      },
      write(chunk: Buffer, _enc, cb) {
        if (sealed) {
          // OpenSSL must not speak after the handoff: anything here would desynchronise sequence numbers.
          fail(new HandshakeError(`OpenSSL wrote ${chunk.length} bytes after the handshake was sealed`, 'internal'));
          return cb();
        }
        trackOutput(chunk);
        raw.write(Buffer.from(chunk), () => cb());
      },
    });

    const socket = new tls.TLSSocket(transport as unknown as import('node:net').Socket, {
      isServer: true,
      secureContext: opts.secureContext,
      ALPNProtocols: opts.ALPNProtocols,
      SNICallback: opts.SNICallback ? (name, cb) => cb(null, opts.SNICallback!(name)) : undefined,
      requestCert: opts.requestCert === true,
      // The decision (and the right alert) is the caller's: node:tls would only drop the connection.
      rejectUnauthorized: false,
    });
    socket.on('keylog', (line: Buffer) => {
      opts.keylog?.(line);
      keylog.add(line);
    });
    socket.on('secure', () => {
      secure = true;
    });
    socket.on('data', () => fail(new HandshakeError('OpenSSL decrypted application data: a record past Finished was fed', 'internal')));
    socket.on('error', (e: Error) => {
      // OpenSSL queued its alert in the output already; flush it, then fail.
      const err = new HandshakeError(`TLS handshake failed: ${e.message}`, 'tls');
      if (raw.pendingOutput > 0) raw.write(Buffer.alloc(0), () => fail(err));
      else fail(err);
    });
    const timer = setTimeout(() => fail(new HandshakeError(`handshake not finished after ${opts.timeoutMs} ms`, 'timeout')), opts.timeoutMs);
    const onAbort = () => fail(new HandshakeError(`handshake aborted: ${String(opts.signal?.reason ?? 'aborted')}`, 'aborted'));
    if (opts.signal?.aborted) queueMicrotask(onAbort);
    else opts.signal?.addEventListener('abort', onAbort, { once: true });

    function trackOutput(chunk: Buffer): void {
      let buf = outPartial.length ? Buffer.concat([outPartial, chunk]) : chunk;
      while (buf.length >= RECORD_HEADER) {
        const n = RECORD_HEADER + buf.readUInt16BE(3);
        if (buf.length < n) break;
        output.push({ type: buf[0]!, bytes: Buffer.from(buf.subarray(0, n)) });
        buf = buf.subarray(n);
      }
      outPartial = Buffer.from(buf);
    }

    /** Feeds OpenSSL one record, only when it asked for data and the handshake is not yet complete. */
    function feed(): void {
      if (finished || sealing || feeding || !readRequested) return;
      if (handshakeDone()) return complete();
      feeding = true;
      raw.readRecord((record) => {
        feeding = false;
        if (finished) return;
        if (!clientHelloSeen) clientHelloSeen = true;
        const clientHello = hello.push(record);
        if (clientHello && offersEarlyData(clientHello)) opts.onEarlyData?.();
        inbound.push(record[0]!);
        outputBeforeLastRecord = output.length;
        readRequested = false;
        transport.push(record); // OpenSSL processes it synchronously when it is reading
        if (handshakeDone()) complete();
      });
    }

    /** TLS 1.3's client application secret is logged while OpenSSL processes the client Finished. */
    function handshakeDone(): boolean {
      return secure || keylog.clientTrafficSecret0 !== undefined;
    }

    function fail(e: HandshakeError): void {
      if (finished) return;
      finished = true;
      sealing = true;
      sealed = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      raw.detach();
      keylog.wipe();
      // fail() may run inside a callback from OpenSSL (an 'error' event): free its state on the next turn, off its stack.
      const ssl = sslOf(socket);
      socket.destroy();
      setImmediate(() => ssl?.destroySSL());
      reject(e);
    }

    function complete(): void {
      if (finished || sealing) return;
      sealing = true;
      // Let OpenSSL finish writing what this flight produced (tickets): node's TLS socket hands its output over one
      // write at a time, each completed on a later turn, so the tickets may wait behind the end of our own flight.
      let turns = 0;
      const seal = () => {
        if (finished) return;
        // What we were given waits for room in the socket: no spinning meanwhile.
        if (raw.pendingOutput > 0) return raw.write(Buffer.alloc(0), seal);
        if (!outputDrained()) {
          if (++turns < MAX_DRAIN_TURNS) return void setImmediate(seal);
          return fail(new HandshakeError(`OpenSSL still had output pending after ${MAX_DRAIN_TURNS} turns`, 'internal'));
        }
        sealed = true;
        if (outPartial.length) return fail(new HandshakeError('OpenSSL left a partial record unwritten', 'internal'));
        // Then require it all in the kernel.
        raw.write(Buffer.alloc(0), () => {
          if (finished) return;
          try {
            const session = settle();
            finished = true;
            clearTimeout(timer);
            opts.signal?.removeEventListener('abort', onAbort);
            raw.detach();
            // The keys are ours now: free OpenSSL's SSL object at once (not on our stack here, a write callback).
            sslOf(socket)?.destroySSL();
            socket.destroy();
            resolve(session);
          } catch (e) {
            fail(e instanceof HandshakeError ? e : new HandshakeError((e as Error).message, 'internal'));
          }
        });
      };
      setImmediate(seal);
    }

    /** Nothing left in OpenSSL's output buffer (the TLS handle's writeQueueSize) nor in the stream on its way to us. */
    function outputDrained(): boolean {
      const handle = (socket as unknown as { _handle?: { writeQueueSize?: number } | null })._handle;
      return (handle?.writeQueueSize ?? 0) === 0 && transport.writableLength === 0;
    }

    function settle(): EstablishedSession {
      const version = socket.getProtocol();
      const cipher = socket.getCipher();
      if (version !== 'TLSv1.2' && version !== 'TLSv1.3') throw new HandshakeError(`negotiated ${version}, which cannot be carried`, 'unsupported-suite');
      const suite = suiteByName(cipher.name, version);
      if (!suite) throw new HandshakeError(`negotiated ${cipher.name}, which cannot be carried`, 'unsupported-suite');
      let secrets: SessionSecrets;
      if (version === 'TLSv1.3') {
        const c = keylog.clientTrafficSecret0;
        const s = keylog.serverTrafficSecret0;
        if (!c || !s) throw new HandshakeError('TLS 1.3 traffic secrets were not logged', 'internal');
        secrets = { version, clientTrafficSecret: c, serverTrafficSecret: s };
      } else {
        const hello = output.find((r) => r.type === 22);
        if (!keylog.masterSecret || !keylog.clientRandom || !hello) throw new HandshakeError('TLS 1.2 master secret or hellos missing', 'internal');
        secrets = { version, masterSecret: keylog.masterSecret, clientRandom: keylog.clientRandom, serverRandom: parseHello(hello.bytes).random };
      }
      const keys = deriveDirectionKeys(suite, secrets);
      const txSeq =
        version === 'TLSv1.2'
          ? afterLast(
              output.map((r) => r.type),
              CCS,
            )
          : countAppKeyRecords(suite, keys.tx, output, outputBeforeLastRecord);
      // TLS 1.2: the client's Finished is its first protected record; TLS 1.3: we stopped right at its Finished.
      const rxSeq = version === 'TLSv1.2' ? afterLast(inbound, CCS) : 0;
      // Its Finished may come in fragments (legal): the count of records it took is the next sequence number.
      if (version === 'TLSv1.2' && rxSeq < 1) throw new HandshakeError('no client record after ChangeCipherSpec', 'internal');
      let kept: EstablishedSession['secrets'];
      if (version === 'TLSv1.3' && opts.keepTrafficSecrets) {
        kept = { client: Buffer.from(keylog.clientTrafficSecret0!), server: Buffer.from(keylog.serverTrafficSecret0!) };
      }
      keylog.wipe();
      for (const r of output) r.bytes.fill(0);
      const session: EstablishedSession = {
        fd,
        version,
        suite,
        servername: typeof socket.servername === 'string' ? socket.servername : undefined,
        alpn: typeof socket.alpnProtocol === 'string' ? socket.alpnProtocol : undefined,
        resumed: socket.isSessionReused(),
        clientCert: opts.requestCert ? clientCertificate(socket) : undefined,
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

/**
 * The socket's TLSWrap (node:tls's `ssl`), whose destroySSL() frees OpenSSL's SSL object: SSL_free cleanses the
 * session's secrets. destroy() alone hands that to a later turn, and over a Duplex to garbage collection (the TLSWrap's
 * finalizer), which may be minutes away. destroySSL() is idempotent (node calls it again on close).
 */
function sslOf(socket: tls.TLSSocket): { destroySSL(): void } | undefined {
  const ssl = (socket as unknown as { ssl?: { destroySSL?: () => void } | null }).ssl;
  return ssl && typeof ssl.destroySSL === 'function' ? (ssl as { destroySSL(): void }) : undefined;
}

/**
 * The client's certificate and OpenSSL's verdict on it. node:tls computes `authorized` only for sockets
 * of a tls.Server, so the verdict comes from the same place it reads it: the TLS handle's verifyError()
 * (null when the chain verified against the CA bundle, else an Error whose code names the reason).
 */
function clientCertificate(socket: tls.TLSSocket): ClientCertificate | undefined {
  const peer = socket.getPeerCertificate();
  if (!peer || !peer.raw) return undefined;
  const handle = (socket as unknown as { _handle?: { verifyError?: () => (Error & { code?: string }) | null } })._handle;
  const verdict = handle?.verifyError ? handle.verifyError() : new Error('verification result unavailable');
  const subject = Object.entries(peer.subject ?? {})
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : String(v)}`)
    .join(', ')
    .replace(/[\x00-\x1f\x7f]/g, '?');
  const cn = peer.subject?.CN;
  return {
    verified: verdict === null,
    error: verdict ? ((verdict as Error & { code?: string }).code ?? verdict.message) : undefined,
    subject,
    subjectCN: Array.isArray(cn) ? cn[0] : cn,
    fingerprint256: peer.fingerprint256,
  };
}

/** Records after the last occurrence of `type` (e.g. protected records after ChangeCipherSpec). */
function afterLast(types: number[], type: number): number {
  const i = types.lastIndexOf(type);
  if (i < 0) throw new HandshakeError('no ChangeCipherSpec seen in a TLS 1.2 handshake', 'internal');
  return types.length - i - 1;
}

/**
 * TLS 1.3: the records we sent under the application key form a suffix of our output. Find it by
 * authenticating each candidate with that key — counting, never assuming (OpenSSL sends tickets).
 * `likelyStart` (what we wrote after the client's Finished went in) is tried first: a record that opens at
 * sequence 0 can only be the first one under that key, so trying it first changes the cost, never the answer.
 */
function countAppKeyRecords(suite: CipherSuite, tx: TrafficKeys, output: Seen[], likelyStart: number): number {
  // One context at sequence 0 tries each candidate in turn (a failed open consumes no sequence number);
  // the first that opens starts the suffix, and every record after it must open in sequence.
  const prot = new RecordProtection(suite, tx.key, tx.iv, 0n);
  const opens = (r: Seen): boolean => {
    try {
      prot.open(r.bytes.subarray(0, RECORD_HEADER), r.bytes.subarray(RECORD_HEADER)).plaintext.fill(0);
      return true;
    } catch (e) {
      if (!(e instanceof RecordError)) throw e;
      return false;
    }
  };
  try {
    const hinted = output[likelyStart];
    const start = hinted?.type === APPDATA && opens(hinted) ? likelyStart : output.findIndex((r) => r.type === APPDATA && opens(r));
    if (start < 0) return 0;
    for (let i = start + 1; i < output.length; i++) {
      if (!opens(output[i]!)) throw new HandshakeError(`record ${i} after the first application-key record does not open in sequence`, 'internal');
    }
    return output.length - start;
  } finally {
    prot.wipe();
  }
}
