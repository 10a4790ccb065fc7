// One long-lived OpenSSL AEAD context per record key (the OpenSSL inside the node binary, via koffi): node:crypto would need a new cipher object per record.
import koffi from 'koffi';
import type { AeadName } from './suites.js';

/** Nonce length of every supported AEAD (OpenSSL's default IV length for GCM and ChaCha20-Poly1305). */
export const AEAD_NONCE_LEN = 12;
export const AEAD_TAG_LEN = 16;

const EVP_CTRL_AEAD_GET_TAG = 0x10;
const EVP_CTRL_AEAD_SET_TAG = 0x11;
/** EVP_CipherInit_ex `enc`: keep the context's current direction. */
const KEEP_DIRECTION = -1;

type Ptr = bigint;

/** Key lengths OpenSSL will read: the key buffer must hold exactly this many bytes. */
const KEY_LEN: Record<AeadName, number> = { 'aes-128-gcm': 16, 'aes-256-gcm': 32, 'chacha20-poly1305': 32 };

function bind() {
  // null: the symbols of the running program, i.e. the OpenSSL statically linked into node.
  const lib = koffi.load(null);
  const fn = {
    ctxNew: lib.func('void *EVP_CIPHER_CTX_new(void)'),
    ctxFree: lib.func('void EVP_CIPHER_CTX_free(void *ctx)'),
    ivLength: lib.func('int EVP_CIPHER_CTX_get_iv_length(const void *ctx)'),
    ctrl: lib.func('int EVP_CIPHER_CTX_ctrl(void *ctx, int type, int arg, void *ptr)'),
    init: lib.func('int EVP_CipherInit_ex(void *ctx, const void *cipher, void *engine, const uint8_t *key, const uint8_t *iv, int enc)'),
    update: lib.func('int EVP_CipherUpdate(void *ctx, uint8_t *out, int *outl, const uint8_t *in, int inl)'),
    final: lib.func('int EVP_CipherFinal_ex(void *ctx, uint8_t *out, int *outl)'),
    clearErrors: lib.func('void ERR_clear_error(void)'),
  };
  const cipher = (name: string): Ptr => {
    const p = lib.func(`const void *${name}(void)`)() as Ptr | null;
    if (!p) throw new Error(`${name}() returned NULL`);
    return p;
  };
  const ciphers: Record<AeadName, Ptr> = {
    'aes-128-gcm': cipher('EVP_aes_128_gcm'),
    'aes-256-gcm': cipher('EVP_aes_256_gcm'),
    'chacha20-poly1305': cipher('EVP_chacha20_poly1305'),
  };
  return { fn, ciphers };
}

let bound: ReturnType<typeof bind>;
try {
  bound = bind();
} catch (e) {
  throw new Error(`record/evp: cannot bind OpenSSL's EVP AEAD functions in the node binary through koffi: ${(e as Error).message}`);
}
const { fn, ciphers } = bound;

/** Where EVP writes output lengths; never read (an AEAD stream outputs exactly what it is given, final outputs nothing). */
const outLen = new Int32Array(1);

/** Frees the C context (and so its key schedule) of an AeadContext collected without free(). */
const orphans = new FinalizationRegistry<Ptr>((ctx) => fn.ctxFree(ctx));

/**
 * An OpenSSL EVP_CIPHER_CTX holding one AEAD key. Per record: `begin(nonce)`, `aad()`, `update()`
 * any number of times, then `sealFinal()` or `openFinal()`. Direction is chosen per record, so one
 * context can both seal and open. Every call is synchronous; buffers are only read during the call.
 */
export class AeadContext {
  readonly aead: AeadName;
  #ctx: Ptr;

  constructor(aead: AeadName, key: Uint8Array) {
    checkLength(key, KEY_LEN[aead], `${aead} key`);
    this.aead = aead;
    const ctx = fn.ctxNew() as Ptr | null;
    if (!ctx) throw new Error('EVP_CIPHER_CTX_new failed');
    if (fn.init(ctx, ciphers[aead], null, key, null, 1) !== 1 || fn.ivLength(ctx) !== AEAD_NONCE_LEN) {
      fn.ctxFree(ctx);
      fn.clearErrors();
      throw new Error(`cannot set up ${aead} in OpenSSL`);
    }
    this.#ctx = ctx;
    orphans.register(this, ctx, this);
  }

  get freed(): boolean {
    return this.#ctx === 0n;
  }

  /** Replaces the key in place (the old key schedule is overwritten). */
  rekey(key: Uint8Array): void {
    checkLength(key, KEY_LEN[this.aead], `${this.aead} key`);
    this.#check(fn.init(this.#live(), null, null, key, null, KEEP_DIRECTION), 'rekey');
  }

  /** Starts a record: sets the 12-byte nonce and the direction, discarding any unfinished record. */
  begin(nonce: Uint8Array, encrypt: boolean): void {
    checkLength(nonce, AEAD_NONCE_LEN, 'nonce');
    this.#check(fn.init(this.#live(), null, null, null, nonce, encrypt ? 1 : 0), 'nonce');
  }

  /** Additional authenticated data (before any `update`). */
  aad(data: Uint8Array): void {
    this.#check(fn.update(this.#live(), null, outLen, data, data.length), 'aad');
  }

  /** Encrypts or decrypts `input` into `out` (same length; `out` may be `input` itself, not a partial overlap). */
  update(out: Uint8Array, input: Uint8Array): void {
    if (input.length === 0) return;
    if (out.length < input.length) throw new RangeError('AEAD output buffer is smaller than the input');
    this.#check(fn.update(this.#live(), out, outLen, input, input.length), 'update');
  }

  /** Ends an encryption and writes the 16-byte tag into `tag`. */
  sealFinal(tag: Uint8Array): void {
    checkLength(tag, AEAD_TAG_LEN, 'tag');
    this.#check(fn.final(this.#live(), null, outLen), 'final');
    this.#check(fn.ctrl(this.#ctx, EVP_CTRL_AEAD_GET_TAG, AEAD_TAG_LEN, tag), 'get tag');
  }

  /** Ends a decryption against the received 16-byte tag; false when the record does not authenticate. */
  openFinal(tag: Uint8Array): boolean {
    checkLength(tag, AEAD_TAG_LEN, 'tag');
    this.#check(fn.ctrl(this.#live(), EVP_CTRL_AEAD_SET_TAG, AEAD_TAG_LEN, tag), 'set tag');
    if (fn.final(this.#ctx, null, outLen) === 1) return true;
    fn.clearErrors();
    return false;
  }

  /** Frees the context; EVP_CIPHER_CTX_free cleanses the key schedule. Idempotent. */
  free(): void {
    const ctx = this.#ctx;
    if (ctx === 0n) return;
    this.#ctx = 0n;
    orphans.unregister(this);
    fn.ctxFree(ctx);
  }

  #live(): Ptr {
    if (this.#ctx === 0n) throw new Error('AEAD context used after free()');
    return this.#ctx;
  }

  #check(r: number, what: string): void {
    if (r === 1) return;
    fn.clearErrors();
    throw new Error(`OpenSSL AEAD ${what} failed`);
  }
}

/** OpenSSL reads or writes a fixed number of bytes through these pointers: a shorter buffer would be overrun. */
function checkLength(b: Uint8Array, len: number, what: string): void {
  if (b.length !== len) throw new RangeError(`${what} must be ${len} bytes, got ${b.length}`);
}
