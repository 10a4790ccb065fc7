// Drives the node binary's own OpenSSL (libssl, through koffi) as a TLS server over memory BIOs, without node:tls.
import koffi from 'koffi';
import { KeylogCollector } from './keylog.js';

// The node binary exports libssl's and libcrypto's symbols (Node 20: OpenSSL 3.0, Node 22/24: 3.x): load the process.
const lib = koffi.load(null);
const fn = (signature: string) => lib.func(signature) as (...args: unknown[]) => unknown;
const Keylog = koffi.proto('void IronSocketKeylog(void *ssl, void *line)');

const api = {
  TLS_server_method: fn('void *TLS_server_method()'),
  SSL_CTX_new: fn('void *SSL_CTX_new(void *)'),
  SSL_CTX_free: fn('void SSL_CTX_free(void *)'),
  SSL_CTX_ctrl: fn('long SSL_CTX_ctrl(void *, int, long, void *)'),
  SSL_CTX_use_certificate: fn('int SSL_CTX_use_certificate(void *, void *)'),
  SSL_CTX_use_PrivateKey: fn('int SSL_CTX_use_PrivateKey(void *, void *)'),
  SSL_CTX_check_private_key: fn('int SSL_CTX_check_private_key(void *)'),
  SSL_CTX_set_keylog_callback: fn('void SSL_CTX_set_keylog_callback(void *, IronSocketKeylog *)'),
  SSL_new: fn('void *SSL_new(void *)'),
  SSL_free: fn('void SSL_free(void *)'),
  SSL_set_bio: fn('void SSL_set_bio(void *, void *, void *)'),
  SSL_set_accept_state: fn('void SSL_set_accept_state(void *)'),
  SSL_do_handshake: fn('int SSL_do_handshake(void *)'),
  SSL_get_error: fn('int SSL_get_error(void *, int)'),
  SSL_version: fn('int SSL_version(void *)'),
  SSL_session_reused: fn('int SSL_session_reused(void *)'),
  SSL_get_current_cipher: fn('void *SSL_get_current_cipher(void *)'),
  SSL_CIPHER_get_name: fn('const char *SSL_CIPHER_get_name(void *)'),
  SSL_get_servername: fn('const char *SSL_get_servername(void *, int)'),
  BIO_s_mem: fn('void *BIO_s_mem()'),
  BIO_new: fn('void *BIO_new(void *)'),
  BIO_new_mem_buf: fn('void *BIO_new_mem_buf(const uint8_t *, int)'),
  BIO_free: fn('int BIO_free(void *)'),
  BIO_write: fn('int BIO_write(void *, const uint8_t *, int)'),
  BIO_read: fn('int BIO_read(void *, _Out_ uint8_t *, int)'),
  BIO_ctrl: fn('long BIO_ctrl(void *, int, long, void *)'),
  PEM_read_bio_X509: fn('void *PEM_read_bio_X509(void *, void *, void *, void *)'),
  PEM_read_bio_PrivateKey: fn('void *PEM_read_bio_PrivateKey(void *, void *, void *, void *)'),
  X509_free: fn('void X509_free(void *)'),
  EVP_PKEY_free: fn('void EVP_PKEY_free(void *)'),
  ERR_get_error: fn('unsigned long ERR_get_error()'),
  ERR_error_string_n: fn('void ERR_error_string_n(unsigned long, _Out_ uint8_t *, size_t)'),
  ERR_clear_error: fn('void ERR_clear_error()'),
  ERR_peek_last_error: fn('unsigned long ERR_peek_last_error()'),
  strlen: fn('size_t strlen(void *)'),
};

const SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59;
const SSL_CTRL_CHAIN_CERT = 89;
const SSL_CTRL_SET_MIN_PROTO_VERSION = 123;
const BIO_CTRL_PENDING = 10;
const SSL_ERROR_WANT_READ = 2;
const TLSEXT_NAMETYPE_host_name = 0;
const ERR_LIB_PEM = 9;
const PEM_R_NO_START_LINE = 108;
/** OpenSSL 3's packing of an error code: library in bits 23–30, reason in the low 23 bits. */
const errorLib = (e: number): number => (e >>> 23) & 0xff;
const errorReason = (e: number): number => e & 0x7fffff;
const VERSIONS = { 'TLSv1.2': 0x0303, 'TLSv1.3': 0x0304 } as const;
/** OpenSSL's ticket key block: 16 bytes of name, 32 of HMAC key, 32 of AES key. */
export const LIBSSL_TICKET_KEYS_BYTES = 80;

type Pointer = unknown;

export interface LibsslServerOptions {
  /** PEM: the leaf certificate first, then its chain. */
  certificateChain: Buffer;
  /** PEM private key; the caller wipes its Buffer (OpenSSL keeps its own copy, freed with the context). */
  key: Buffer;
  minVersion: keyof typeof VERSIONS;
  /** 80 bytes shared by every process that must resume the others' tickets; random per context when absent. */
  ticketKeys?: Buffer;
}

export class LibsslError extends Error {}

/** Everything OpenSSL queued on this thread, as one line (and the queue emptied: node:tls shares it). */
function takeErrors(): string {
  const parts: string[] = [];
  const text = Buffer.alloc(256);
  for (let e = Number(api.ERR_get_error()); e !== 0; e = Number(api.ERR_get_error())) {
    api.ERR_error_string_n(e, text, text.length);
    parts.push(text.subarray(0, text.indexOf(0)).toString('latin1'));
  }
  api.ERR_clear_error();
  return parts.join('; ') || 'no OpenSSL error queued';
}

function readPem<T>(pem: Buffer, read: (bio: Pointer) => T): T {
  const bio = api.BIO_new_mem_buf(pem, pem.length);
  try {
    return read(bio);
  } finally {
    api.BIO_free(bio);
  }
}

/** One server configuration (certificate, key, versions, ticket keys) that handshakes are made from. */
export class LibsslServer {
  #ctx: Pointer;
  readonly #live = new Map<bigint, LibsslHandshake>();
  readonly #keylog: bigint;
  #registered = true;

  constructor(o: LibsslServerOptions) {
    api.ERR_clear_error();
    this.#ctx = api.SSL_CTX_new(api.TLS_server_method());
    if (!this.#ctx) throw new LibsslError(`SSL_CTX_new: ${takeErrors()}`);
    try {
      this.#keylog = koffi.register((ssl: Pointer, line: Pointer) => this.#onKeylog(ssl, line), koffi.pointer(Keylog));
    } catch (e) {
      api.SSL_CTX_free(this.#ctx);
      throw e;
    }
    try {
      this.#configure(o);
    } catch (e) {
      this.free();
      throw e;
    }
  }

  #configure(o: LibsslServerOptions): void {
    const ctx = this.#ctx;
    readPem(o.certificateChain, (bio) => {
      const leaf = api.PEM_read_bio_X509(bio, null, null, null);
      if (!leaf) throw new LibsslError(`certificate: ${takeErrors()}`);
      const used = api.SSL_CTX_use_certificate(ctx, leaf);
      api.X509_free(leaf); // the context holds its own reference
      if (used !== 1) throw new LibsslError(`certificate: ${takeErrors()}`);
      for (let x = api.PEM_read_bio_X509(bio, null, null, null); x; x = api.PEM_read_bio_X509(bio, null, null, null)) {
        if (Number(api.SSL_CTX_ctrl(ctx, SSL_CTRL_CHAIN_CERT, 0, x)) === 1) continue; // add0: the context owns x now
        api.X509_free(x);
        throw new LibsslError(`chain: ${takeErrors()}`);
      }
      // The end of the PEM stream is queued as "no start line"; anything else is a certificate that did not parse.
      const last = Number(api.ERR_peek_last_error());
      if (errorLib(last) !== ERR_LIB_PEM || errorReason(last) !== PEM_R_NO_START_LINE) throw new LibsslError(`chain: ${takeErrors()}`);
      api.ERR_clear_error();
    });
    readPem(o.key, (bio) => {
      const pkey = api.PEM_read_bio_PrivateKey(bio, null, null, null);
      if (!pkey) throw new LibsslError(`private key: ${takeErrors()}`);
      const used = api.SSL_CTX_use_PrivateKey(ctx, pkey);
      api.EVP_PKEY_free(pkey);
      if (used !== 1 || api.SSL_CTX_check_private_key(ctx) !== 1) throw new LibsslError(`private key: ${takeErrors()}`);
    });
    if (Number(api.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, VERSIONS[o.minVersion], null)) !== 1)
      throw new LibsslError(`minimum version: ${takeErrors()}`);
    if (o.ticketKeys) {
      if (o.ticketKeys.length !== LIBSSL_TICKET_KEYS_BYTES) throw new LibsslError(`ticket keys must be ${LIBSSL_TICKET_KEYS_BYTES} bytes`);
      if (Number(api.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, o.ticketKeys.length, o.ticketKeys)) !== 1)
        throw new LibsslError(`ticket keys: ${takeErrors()}`);
    }
    api.SSL_CTX_set_keylog_callback(ctx, this.#keylog);
    api.ERR_clear_error();
  }

  #onKeylog(ssl: Pointer, line: Pointer): void {
    const hs = this.#live.get(koffi.address(ssl));
    // A view of OpenSSL's own line (it cleanses and frees it when this returns), not a copy: the collector decodes the
    // secret from it straight into its own Buffer, without strings, then zeroes the line. The view is not kept.
    const bytes = Buffer.from(koffi.view(line, Number(api.strlen(line))) as ArrayBuffer);
    if (hs) hs.secrets.add(bytes);
    else bytes.fill(0);
  }

  /** A server handshake waiting for the client's first bytes. */
  accept(): LibsslHandshake {
    if (!this.#ctx) throw new LibsslError('context freed');
    const ssl = api.SSL_new(this.#ctx);
    if (!ssl) throw new LibsslError(`SSL_new: ${takeErrors()}`);
    let hs: LibsslHandshake;
    try {
      hs = new LibsslHandshake(ssl, (address) => {
        this.#live.delete(address);
        if (!this.#ctx && this.#live.size === 0) this.#unregister();
      });
    } catch (e) {
      api.SSL_free(ssl);
      throw e;
    }
    this.#live.set(koffi.address(ssl), hs);
    return hs;
  }

  /**
   * Frees OpenSSL's context (certificate, key, ticket keys) once no handshake uses it: each one still open keeps a
   * reference, and the keylog callback stays registered until the last of them is freed.
   */
  free(): void {
    if (this.#ctx) api.SSL_CTX_free(this.#ctx);
    this.#ctx = null;
    if (this.#live.size === 0) this.#unregister();
  }

  #unregister(): void {
    if (this.#registered) koffi.unregister(this.#keylog);
    this.#registered = false;
  }
}

/** What feeding bytes to a handshake gave: what to send the client, and whether it is over. */
export type LibsslStep = { state: 'continue'; output: Buffer } | { state: 'established'; output: Buffer } | { state: 'failed'; output: Buffer; reason: string };

/** One connection's handshake; the caller feeds it the client's records and sends what each step gives back. */
export class LibsslHandshake {
  #ssl: Pointer;
  readonly #rbio: Pointer;
  readonly #wbio: Pointer;
  readonly #forget: (address: bigint) => void;
  readonly #address: bigint;
  /** The session's secrets as OpenSSL derived them (TLS 1.3 traffic secrets, or TLS 1.2's master secret). */
  readonly secrets = new KeylogCollector();

  constructor(ssl: Pointer, forget: (address: bigint) => void) {
    this.#ssl = ssl;
    this.#address = koffi.address(ssl);
    this.#forget = forget;
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
    if (r !== 1 && err !== SSL_ERROR_WANT_READ) return { state: 'failed', output, reason: takeErrors() };
    api.ERR_clear_error(); // nothing of this handshake's left for node:crypto on this thread
    return { state: r === 1 ? 'established' : 'continue', output };
  }

  /** Bytes fed but not yet consumed by OpenSSL (none after a whole record). */
  get unread(): number {
    this.#live(); // the BIO went with the SSL object
    return Number(api.BIO_ctrl(this.#rbio, BIO_CTRL_PENDING, 0, null));
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
    return (api.SSL_get_servername(this.#live(), TLSEXT_NAMETYPE_host_name) as string | null) ?? undefined;
  }

  /** Frees the SSL object (OpenSSL cleanses its secrets) and wipes what the collector holds. Idempotent. */
  free(): void {
    if (this.#ssl) {
      api.SSL_free(this.#ssl);
      this.#forget(this.#address);
    }
    this.#ssl = null;
    this.secrets.wipe();
  }

  #live(): Pointer {
    if (!this.#ssl) throw new LibsslError('handshake freed');
    return this.#ssl;
  }

  #output(): Buffer {
    const pending = Number(api.BIO_ctrl(this.#wbio, BIO_CTRL_PENDING, 0, null));
    if (pending === 0) return Buffer.alloc(0);
    const out = Buffer.allocUnsafe(pending);
    const n = Number(api.BIO_read(this.#wbio, out, pending));
    return n === pending ? out : out.subarray(0, Math.max(0, n));
  }
}
