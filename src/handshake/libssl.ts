// Drives the node binary's own OpenSSL (libssl, through koffi) as a TLS server over memory BIOs, without node:tls.
import koffi from 'koffi';
import { KeylogCollector } from './keylog.js';
import { describeClientCertificate, type ClientCertificate } from './client-certificate.js';
import type { TicketKeyring } from './ticket-keys.js';
import * as C from './libssl-api.js';
import { api, LibsslError, takeErrors, type Pointer } from './libssl-api.js';
import { usePair, verifyClients } from './libssl-context.js';

export { LibsslError };

const VERSIONS = { 'TLSv1.2': 0x0303, 'TLSv1.3': 0x0304 } as const;
const SSL_CTRL_SET_MAX_PROTO_VERSION = 124;
const SSL_TLSEXT_ERR_NOACK = 3;
const TICKET_PART = 16;
const ALERT_INTERNAL_ERROR = 80;
const DEFAULT_SESSION_ID_CONTEXT = 'ironsocket';

export interface LibsslServerOptions {
  /** One or more certificates for the same names (e.g. ECDSA and RSA): PEM, each leaf first, then its chain. */
  pairs: { certificateChain: Buffer; key: Buffer }[];
  minVersion: keyof typeof VERSIONS;
  /** OpenSSL names, TLS 1.3 suites (TLS_…) and TLS 1.2 ciphers together, as node:tls takes them; OpenSSL's defaults when absent. */
  ciphers?: string;
  /** Refuse TLS 1.2 renegotiation (SSL_OP_NO_RENEGOTIATION). */
  noRenegotiation?: boolean;
  /** Offered ALPN protocols in preference order; a client offering others gets no_application_protocol. */
  alpn?: string[];
  /** Ask for a client certificate and verify it against `ca` (PEM bundle) and `crl` (PEM CRLs); the verdict is reported, never enforced here. */
  clientAuth?: { ca: Buffer; crl?: string[] };
  /** Tickets are encrypted and accepted under this keyring (HAProxy's key format), else under keys OpenSSL makes per context. */
  tickets?: TicketKeyring;
  /** A session resumes only where this matches (at most 32 bytes); DEFAULT_SESSION_ID_CONTEXT when absent. */
  sessionIdContext?: string;
}

/** Options of one handshake. */
export interface AcceptOptions {
  /** The server for the client's SNI (this one when absent or when it returns this one). */
  sni?: (servername: string) => LibsslServer;
  /** Hears each key log line (newline-terminated) before it is zeroed (the keylog debug switch only). */
  keylog?: (line: Buffer) => void;
}

/** Every handshake of this thread, by the address of its SSL object: how OpenSSL's callbacks find theirs. */
const live = new Map<bigint, LibsslHandshake>();
/** The OpenSSL context of each server not yet freed. */
const contexts = new WeakMap<LibsslServer, Pointer>();

/**
 * Every callback is guarded whole: an exception thrown into OpenSSL would make koffi skip the handshake's later
 * callbacks and rethrow it out of SSL_do_handshake.
 */
function onKeylog(ssl: Pointer, line: Pointer): void {
  try {
    keylog(ssl, line);
  } catch {
    // a line that cannot be kept leaves its secret missing, which fails the handshake when the keys are derived
  }
}

function keylog(ssl: Pointer, line: Pointer): void {
  // A view of OpenSSL's own line (it cleanses and frees it when this returns), not a copy: the collector decodes the
  // secret from it straight into its own Buffer, without strings, then zeroes the line. The view is not kept.
  const bytes = Buffer.from(koffi.view(line, Number(api.strlen(line))) as ArrayBuffer);
  const hs = live.get(koffi.address(ssl));
  if (!hs) return void bytes.fill(0);
  if (hs.options.keylog) {
    // The hook gets a whole line, as NSS key log files hold them (OpenSSL's has no newline), zeroed after.
    const whole = Buffer.alloc(bytes.length + 1, 0x0a);
    bytes.copy(whole);
    try {
      hs.options.keylog(whole);
    } catch {
      // the debug hook reports its own failures
    } finally {
      whole.fill(0);
    }
  }
  hs.secrets.add(bytes); // parses, then zeroes the line whatever happened
}

function onServername(ssl: Pointer, alert: Pointer): number {
  try {
    const hs = live.get(koffi.address(ssl));
    const name = api.SSL_get_servername(ssl, C.TLSEXT_NAMETYPE_host_name) as string | null;
    if (!hs || !name || !hs.options.sni) return C.SSL_TLSEXT_ERR_OK;
    const ctx = contexts.get(hs.options.sni(name));
    if (ctx && ctx !== contexts.get(hs.server) && !api.SSL_set_SSL_CTX(ssl, ctx)) throw new LibsslError('SSL_set_SSL_CTX failed');
    return C.SSL_TLSEXT_ERR_OK;
  } catch {
    koffi.encode(alert, 'int', ALERT_INTERNAL_ERROR);
    return C.SSL_TLSEXT_ERR_ALERT_FATAL;
  }
}

function onAlpn(ssl: Pointer, out: Pointer, outlen: Pointer, offered: Pointer, offeredLength: number): number {
  try {
    const wire = live.get(koffi.address(ssl))?.server.alpnWire;
    if (!wire) return SSL_TLSEXT_ERR_NOACK;
    // Our preference first; the selection points into native memory that lives as long as the server (or into the client's list).
    const r = Number(api.SSL_select_next_proto(out, outlen, wire.pointer, wire.length, offered, offeredLength));
    return r === C.OPENSSL_NPN_NEGOTIATED ? C.SSL_TLSEXT_ERR_OK : C.SSL_TLSEXT_ERR_ALERT_FATAL;
  } catch {
    return C.SSL_TLSEXT_ERR_ALERT_FATAL;
  }
}

/** OpenSSL's ticket key callback: 1 = encrypting, 2 = key found (and a fresh ticket is issued), 0 = unknown key, -1 = error. */
function onTicketKey(ssl: Pointer, name: Pointer, iv: Pointer, cipher: Pointer, hmac: Pointer, encrypt: number): number {
  try {
    return ticketKey(ssl, name, iv, cipher, hmac, encrypt);
  } catch {
    return -1; // nothing may throw back into OpenSSL
  }
}

function ticketKey(ssl: Pointer, name: Pointer, iv: Pointer, cipher: Pointer, hmac: Pointer, encrypt: number): number {
  const ring = live.get(koffi.address(ssl))?.server.tickets;
  if (!ring) return -1;
  if (encrypt === 1) {
    const k = ring.forEncryption();
    api.memcpy(name, k.name, TICKET_PART);
    if (Number(api.RAND_bytes(iv, TICKET_PART)) !== 1) return -1;
    if (Number(api.EVP_EncryptInit_ex(cipher, api.EVP_aes_128_cbc(), null, k.aes, iv)) !== 1) return -1;
    return Number(api.HMAC_Init_ex(hmac, k.hmac, TICKET_PART, api.EVP_sha256(), null)) === 1 ? 1 : -1;
  }
  const k = ring.forDecryption(new Uint8Array(koffi.view(name, TICKET_PART) as ArrayBuffer));
  if (!k) return 0;
  if (Number(api.HMAC_Init_ex(hmac, k.hmac, TICKET_PART, api.EVP_sha256(), null)) !== 1) return -1;
  return Number(api.EVP_DecryptInit_ex(cipher, api.EVP_aes_128_cbc(), null, k.aes, iv)) === 1 ? 2 : -1;
}

/** The client's certificate never ends the handshake here: the caller decides, with the right alert (as node:tls's server does). */
const onVerify = (): number => 1;

/**
 * The callbacks, registered once per thread on first use and kept for the thread's life (koffi holds at most 8192 in a
 * process; this is 5 per thread). Each finds its handshake through `live`.
 */
let callbacks: Record<keyof typeof C.Callback, bigint> | undefined;
function registered(): Record<keyof typeof C.Callback, bigint> {
  callbacks ??= {
    keylog: koffi.register(onKeylog, koffi.pointer(C.Callback.keylog)),
    servername: koffi.register(onServername, koffi.pointer(C.Callback.servername)),
    alpn: koffi.register(onAlpn, koffi.pointer(C.Callback.alpn)),
    ticketKey: koffi.register(onTicketKey, koffi.pointer(C.Callback.ticketKey)),
    verify: koffi.register(onVerify, koffi.pointer(C.Callback.verify)),
  };
  return callbacks;
}

/** ALPN protocols in TLS's wire format, copied into native memory (OpenSSL keeps a pointer into it past our callback). */
function alpnWire(protocols: string[]): { pointer: Pointer; length: number } {
  const wire = Buffer.concat(protocols.map((p) => Buffer.concat([Buffer.from([Buffer.byteLength(p)]), Buffer.from(p)])));
  const pointer = koffi.alloc('uint8_t', wire.length);
  koffi.encode(pointer, koffi.array('uint8_t', wire.length), [...wire]);
  return { pointer, length: wire.length };
}

/** One server configuration (certificates, versions, ciphers, ALPN, client CA, ticket keys) that handshakes are made from. */
export class LibsslServer {
  #ctx: Pointer;
  /** Handshakes accepted here and not yet freed: the ALPN list's native memory outlives the context until they are gone. */
  #handshakes = 0;
  readonly tickets: TicketKeyring | undefined;
  alpnWire: { pointer: Pointer; length: number } | undefined;
  readonly requestsCertificate: boolean;

  constructor(o: LibsslServerOptions) {
    const cb = registered();
    api.ERR_clear_error();
    this.#ctx = api.SSL_CTX_new(api.TLS_server_method());
    if (!this.#ctx) throw new LibsslError(`SSL_CTX_new: ${takeErrors()}`);
    this.tickets = o.tickets;
    this.requestsCertificate = o.clientAuth !== undefined;
    this.alpnWire = o.alpn && o.alpn.length > 0 ? alpnWire(o.alpn) : undefined;
    try {
      this.#configure(o, cb);
    } catch (e) {
      this.free();
      throw e;
    }
    contexts.set(this, this.#ctx);
  }

  #configure(o: LibsslServerOptions, cb: Record<keyof typeof C.Callback, bigint>): void {
    const ctx = this.#ctx;
    const ctrl = (cmd: number, larg: number, parg: unknown, what: string) => {
      if (Number(api.SSL_CTX_ctrl(ctx, cmd, larg, parg)) !== 1) throw new LibsslError(`${what}: ${takeErrors()}`);
    };
    if (o.pairs.length === 0) throw new LibsslError('no certificate');
    for (const p of o.pairs) usePair(ctx, p.certificateChain, p.key);
    ctrl(C.SSL_CTRL_SET_MIN_PROTO_VERSION, VERSIONS[o.minVersion], null, 'minimum version');
    if (o.ciphers !== undefined) {
      const names = o.ciphers.split(':').filter(Boolean);
      const suites = names.filter((n) => n.startsWith('TLS_')).join(':');
      const ciphers = names.filter((n) => !n.startsWith('TLS_')).join(':');
      // As node:tls: no TLS 1.3 suite named means TLS 1.2 at most (below a TLS 1.3 minimum, OpenSSL's default suites),
      // no TLS 1.2 cipher named means TLS 1.3 only; neither is no server at all.
      if (suites === '' && ciphers === '') throw new LibsslError(`no cipher in "${o.ciphers}"`);
      if (suites !== '') {
        if (Number(api.SSL_CTX_set_ciphersuites(ctx, suites)) !== 1) throw new LibsslError(`TLS 1.3 suites: ${takeErrors()}`);
      } else if (o.minVersion !== 'TLSv1.3') ctrl(SSL_CTRL_SET_MAX_PROTO_VERSION, VERSIONS['TLSv1.2'], null, 'maximum version');
      if (ciphers === '') ctrl(C.SSL_CTRL_SET_MIN_PROTO_VERSION, VERSIONS['TLSv1.3'], null, 'minimum version');
      else if (Number(api.SSL_CTX_set_cipher_list(ctx, ciphers)) !== 1) throw new LibsslError(`TLS 1.2 ciphers: ${takeErrors()}`);
    }
    if (o.noRenegotiation) api.SSL_CTX_set_options(ctx, C.SSL_OP_NO_RENEGOTIATION);
    // No server-side session cache (tickets only, as node:tls sockets outside a tls.Server); buffers freed when idle.
    api.SSL_CTX_ctrl(ctx, C.SSL_CTRL_SET_SESS_CACHE_MODE, C.SSL_SESS_CACHE_OFF, null);
    api.SSL_CTX_ctrl(ctx, C.SSL_CTRL_MODE, C.SSL_MODE_RELEASE_BUFFERS, null);
    // Always one: OpenSSL refuses to resume (internal_error) where it verifies clients and none is set.
    const id = Buffer.from(o.sessionIdContext ?? DEFAULT_SESSION_ID_CONTEXT);
    if (Number(api.SSL_CTX_set_session_id_context(ctx, id, id.length)) !== 1) throw new LibsslError(`session id context: ${takeErrors()}`);
    if (o.tickets) {
      api.SSL_CTX_set_timeout(ctx, o.tickets.lifetimeS);
      api.SSL_CTX_callback_ctrl(ctx, C.SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB, cb.ticketKey);
    }
    if (o.clientAuth) verifyClients(ctx, o.clientAuth.ca, o.clientAuth.crl ?? [], cb.verify);
    api.SSL_CTX_callback_ctrl(ctx, C.SSL_CTRL_SET_TLSEXT_SERVERNAME_CB, cb.servername);
    api.SSL_CTX_set_alpn_select_cb(ctx, cb.alpn, null);
    api.SSL_CTX_set_keylog_callback(ctx, cb.keylog);
    api.ERR_clear_error();
  }

  /** A server handshake waiting for the client's first bytes. */
  accept(options: AcceptOptions = {}): LibsslHandshake {
    if (!this.#ctx) throw new LibsslError('context freed');
    const ssl = api.SSL_new(this.#ctx);
    if (!ssl) throw new LibsslError(`SSL_new: ${takeErrors()}`);
    let hs: LibsslHandshake;
    try {
      hs = new LibsslHandshake(ssl, this, options, () => {
        this.#handshakes--;
        this.#release();
      });
    } catch (e) {
      api.SSL_free(ssl);
      throw e;
    }
    this.#handshakes++;
    live.set(koffi.address(ssl), hs);
    return hs;
  }

  /** Frees OpenSSL's context (certificates, keys) once no handshake uses it: each one still open keeps a reference. */
  free(): void {
    if (this.#ctx) api.SSL_CTX_free(this.#ctx);
    this.#ctx = null;
    contexts.delete(this);
    this.#release();
  }

  #release(): void {
    if (this.#ctx || this.#handshakes > 0 || !this.alpnWire) return;
    koffi.free(this.alpnWire.pointer);
    this.alpnWire = undefined;
  }
}

/** What feeding bytes to a handshake gave: what to send the client, and whether it is over. */
export type LibsslStep = { state: 'continue'; output: Buffer } | { state: 'established'; output: Buffer } | { state: 'failed'; output: Buffer; reason: string };

/** One connection's handshake; the caller feeds it the client's records and sends what each step gives back. */
export class LibsslHandshake {
  #ssl: Pointer;
  readonly #rbio: Pointer;
  readonly #wbio: Pointer;
  readonly #address: bigint;
  /** The session's secrets as OpenSSL derived them (TLS 1.3 traffic secrets, or TLS 1.2's master secret). */
  readonly secrets = new KeylogCollector();

  constructor(
    ssl: Pointer,
    /** The server it was accepted on: its ALPN list and ticket keys serve the whole handshake, whatever SNI picks. */
    readonly server: LibsslServer,
    readonly options: AcceptOptions,
    private readonly onFree: () => void,
  ) {
    this.#ssl = ssl;
    this.#address = koffi.address(ssl);
    const mem = api.BIO_s_mem();
    this.#rbio = api.BIO_new(mem);
    this.#wbio = this.#rbio ? api.BIO_new(mem) : null;
    if (!this.#wbio) {
      if (this.#rbio) api.BIO_free(this.#rbio);
      throw new LibsslError(`BIO_new: ${takeErrors()}`);
    }
    api.SSL_set_bio(ssl, this.#rbio, this.#wbio); // owned by ssl from here
    api.SSL_set_accept_state(ssl);
  }

  /** Hands OpenSSL `bytes` from the client (give it one record at a time to keep it from reading past one). */
  feed(bytes: Buffer): LibsslStep {
    const ssl = this.#live();
    api.ERR_clear_error();
    if (bytes.length && Number(api.BIO_write(this.#rbio, bytes, bytes.length)) !== bytes.length)
      return { state: 'failed', output: Buffer.alloc(0), reason: `BIO_write: ${takeErrors()}` };
    const r = Number(api.SSL_do_handshake(ssl));
    const output = this.#output();
    const err = r === 1 ? 0 : Number(api.SSL_get_error(ssl, r));
    if (r !== 1 && err !== C.SSL_ERROR_WANT_READ) return { state: 'failed', output, reason: takeErrors() };
    api.ERR_clear_error(); // nothing of this handshake's left for node:crypto on this thread
    return { state: r === 1 ? 'established' : 'continue', output };
  }

  /** Bytes fed but not yet consumed by OpenSSL (none after a whole record). */
  get unread(): number {
    this.#live(); // the BIO went with the SSL object
    return Number(api.BIO_ctrl(this.#rbio, C.BIO_CTRL_PENDING, 0, null));
  }

  get version(): 'TLSv1.2' | 'TLSv1.3' | undefined {
    const v = Number(api.SSL_version(this.#live()));
    return v === VERSIONS['TLSv1.3'] ? 'TLSv1.3' : v === VERSIONS['TLSv1.2'] ? 'TLSv1.2' : undefined;
  }
  /** OpenSSL's name of the negotiated suite (IANA for TLS 1.3: TLS_AES_128_GCM_SHA256). */
  get cipher(): string | undefined {
    const c = api.SSL_get_current_cipher(this.#live());
    return c ? (api.SSL_CIPHER_get_name(c) as string) : undefined;
  }
  get resumed(): boolean {
    return Number(api.SSL_session_reused(this.#live())) === 1;
  }
  get servername(): string | undefined {
    return (api.SSL_get_servername(this.#live(), C.TLSEXT_NAMETYPE_host_name) as string | null) ?? undefined;
  }
  /** The protocol ALPN selected, if any. */
  get alpn(): string | undefined {
    const data: unknown[] = [null];
    const length: number[] = [0];
    api.SSL_get0_alpn_selected(this.#live(), data, length);
    if (!data[0] || !length[0]) return undefined;
    return Buffer.from(koffi.view(data[0], length[0]) as ArrayBuffer).toString('latin1');
  }
  /** The ServerHello's random (TLS 1.2 key derivation needs it beside the master secret). */
  get serverRandom(): Buffer {
    const out = Buffer.alloc(32);
    const n = Number(api.SSL_get_server_random(this.#live(), out, out.length));
    if (n !== out.length) throw new LibsslError(`server random: ${n} bytes`);
    return out;
  }
  /** The client's certificate and its verification result (undefined when none was sent or none was asked for). */
  get clientCertificate(): ClientCertificate | undefined {
    const ssl = this.#live();
    const x = api.SSL_get1_peer_certificate(ssl);
    if (!x) return undefined;
    const bio = api.BIO_new(api.BIO_s_mem());
    try {
      if (!bio || Number(api.i2d_X509_bio(bio, x)) !== 1) throw new LibsslError(`client certificate: ${takeErrors()}`);
      const der = Buffer.alloc(Number(api.BIO_ctrl(bio, C.BIO_CTRL_PENDING, 0, null)));
      api.BIO_read(bio, der, der.length);
      return describeClientCertificate(der, Number(api.SSL_get_verify_result(ssl)));
    } finally {
      if (bio) api.BIO_free(bio);
      api.X509_free(x);
    }
  }

  /** Frees the SSL object (OpenSSL cleanses its secrets) and wipes what the collector holds. Idempotent. */
  free(): void {
    if (this.#ssl) {
      api.SSL_free(this.#ssl);
      live.delete(this.#address);
      this.onFree();
    }
    this.#ssl = null;
    this.secrets.wipe();
  }

  #live(): Pointer {
    if (!this.#ssl) throw new LibsslError('handshake freed');
    return this.#ssl;
  }

  #output(): Buffer {
    const pending = Number(api.BIO_ctrl(this.#wbio, C.BIO_CTRL_PENDING, 0, null));
    if (pending === 0) return Buffer.alloc(0);
    const out = Buffer.allocUnsafe(pending);
    const n = Number(api.BIO_read(this.#wbio, out, pending));
    return n === pending ? out : out.subarray(0, Math.max(0, n));
  }
}
