// The node binary's own libssl and libcrypto functions (through koffi) that the handshake engine calls, and their constants.
import koffi from 'koffi';

// The node binary exports libssl's and libcrypto's symbols (Node 20: OpenSSL 3.0, Node 22/24: 3.x): load the process.
const lib = koffi.load(null);
const fn = (signature: string) => lib.func(signature) as (...args: unknown[]) => unknown;

/** The callbacks OpenSSL makes into us; each is registered once per thread (see libssl.ts). */
export const Callback = {
  keylog: koffi.proto('void IronSocketKeylog(void *ssl, void *line)'),
  servername: koffi.proto('int IronSocketServername(void *ssl, void *alert, void *arg)'),
  alpn: koffi.proto('int IronSocketAlpn(void *ssl, void *out, void *outlen, void *in, unsigned int inlen, void *arg)'),
  ticketKey: koffi.proto('int IronSocketTicketKey(void *ssl, void *name, void *iv, void *cipher, void *hmac, int enc)'),
  verify: koffi.proto('int IronSocketVerify(int ok, void *store)'),
};

export const api = {
  TLS_server_method: fn('void *TLS_server_method()'),
  SSL_CTX_new: fn('void *SSL_CTX_new(void *)'),
  SSL_CTX_free: fn('void SSL_CTX_free(void *)'),
  SSL_CTX_ctrl: fn('long SSL_CTX_ctrl(void *, int, long, void *)'),
  SSL_CTX_callback_ctrl: fn('long SSL_CTX_callback_ctrl(void *, int, void *)'),
  SSL_CTX_set_options: fn('uint64_t SSL_CTX_set_options(void *, uint64_t)'),
  SSL_CTX_set_cipher_list: fn('int SSL_CTX_set_cipher_list(void *, const char *)'),
  SSL_CTX_set_ciphersuites: fn('int SSL_CTX_set_ciphersuites(void *, const char *)'),
  SSL_CTX_set_timeout: fn('long SSL_CTX_set_timeout(void *, long)'),
  SSL_CTX_set_session_id_context: fn('int SSL_CTX_set_session_id_context(void *, const uint8_t *, unsigned int)'),
  SSL_CTX_use_certificate: fn('int SSL_CTX_use_certificate(void *, void *)'),
  SSL_CTX_use_PrivateKey: fn('int SSL_CTX_use_PrivateKey(void *, void *)'),
  SSL_CTX_check_private_key: fn('int SSL_CTX_check_private_key(void *)'),
  SSL_CTX_set_keylog_callback: fn('void SSL_CTX_set_keylog_callback(void *, void *)'),
  SSL_CTX_set_alpn_select_cb: fn('void SSL_CTX_set_alpn_select_cb(void *, void *, void *)'),
  SSL_CTX_set_verify: fn('void SSL_CTX_set_verify(void *, int, void *)'),
  SSL_CTX_get_cert_store: fn('void *SSL_CTX_get_cert_store(void *)'),
  SSL_CTX_add_client_CA: fn('int SSL_CTX_add_client_CA(void *, void *)'),
  SSL_new: fn('void *SSL_new(void *)'),
  SSL_free: fn('void SSL_free(void *)'),
  SSL_set_bio: fn('void SSL_set_bio(void *, void *, void *)'),
  SSL_set_accept_state: fn('void SSL_set_accept_state(void *)'),
  SSL_set_SSL_CTX: fn('void *SSL_set_SSL_CTX(void *, void *)'),
  SSL_do_handshake: fn('int SSL_do_handshake(void *)'),
  SSL_get_error: fn('int SSL_get_error(void *, int)'),
  SSL_version: fn('int SSL_version(void *)'),
  SSL_session_reused: fn('int SSL_session_reused(void *)'),
  SSL_get_current_cipher: fn('void *SSL_get_current_cipher(void *)'),
  SSL_CIPHER_get_name: fn('const char *SSL_CIPHER_get_name(void *)'),
  SSL_get_servername: fn('const char *SSL_get_servername(void *, int)'),
  SSL_get0_alpn_selected: fn('void SSL_get0_alpn_selected(void *, _Out_ void **, _Out_ unsigned int *)'),
  SSL_get_server_random: fn('size_t SSL_get_server_random(void *, _Out_ uint8_t *, size_t)'),
  SSL_get1_peer_certificate: fn('void *SSL_get1_peer_certificate(void *)'),
  SSL_get_verify_result: fn('long SSL_get_verify_result(void *)'),
  SSL_select_next_proto: fn('int SSL_select_next_proto(void *, void *, void *, unsigned int, void *, unsigned int)'),
  BIO_s_mem: fn('void *BIO_s_mem()'),
  BIO_new: fn('void *BIO_new(void *)'),
  BIO_new_mem_buf: fn('void *BIO_new_mem_buf(const uint8_t *, int)'),
  BIO_free: fn('int BIO_free(void *)'),
  BIO_write: fn('int BIO_write(void *, const uint8_t *, int)'),
  BIO_read: fn('int BIO_read(void *, _Out_ uint8_t *, int)'),
  BIO_ctrl: fn('long BIO_ctrl(void *, int, long, void *)'),
  PEM_read_bio_X509: fn('void *PEM_read_bio_X509(void *, void *, void *, void *)'),
  PEM_read_bio_X509_CRL: fn('void *PEM_read_bio_X509_CRL(void *, void *, void *, void *)'),
  PEM_read_bio_PrivateKey: fn('void *PEM_read_bio_PrivateKey(void *, void *, void *, const char *)'),
  X509_free: fn('void X509_free(void *)'),
  X509_CRL_free: fn('void X509_CRL_free(void *)'),
  X509_STORE_add_cert: fn('int X509_STORE_add_cert(void *, void *)'),
  X509_STORE_add_crl: fn('int X509_STORE_add_crl(void *, void *)'),
  X509_STORE_set_flags: fn('int X509_STORE_set_flags(void *, unsigned long)'),
  i2d_X509_bio: fn('int i2d_X509_bio(void *, void *)'),
  EVP_PKEY_free: fn('void EVP_PKEY_free(void *)'),
  EVP_aes_128_cbc: fn('void *EVP_aes_128_cbc()'),
  EVP_sha256: fn('void *EVP_sha256()'),
  EVP_EncryptInit_ex: fn('int EVP_EncryptInit_ex(void *, void *, void *, const uint8_t *, void *)'),
  EVP_DecryptInit_ex: fn('int EVP_DecryptInit_ex(void *, void *, void *, const uint8_t *, void *)'),
  HMAC_Init_ex: fn('int HMAC_Init_ex(void *, const uint8_t *, int, void *, void *)'),
  RAND_bytes: fn('int RAND_bytes(void *, int)'),
  ERR_get_error: fn('unsigned long ERR_get_error()'),
  ERR_error_string_n: fn('void ERR_error_string_n(unsigned long, _Out_ uint8_t *, size_t)'),
  ERR_clear_error: fn('void ERR_clear_error()'),
  ERR_peek_last_error: fn('unsigned long ERR_peek_last_error()'),
  strlen: fn('size_t strlen(void *)'),
  memcpy: fn('void *memcpy(void *, const uint8_t *, size_t)'),
};

export const SSL_CTRL_MODE = 33;
export const SSL_CTRL_SET_SESS_CACHE_MODE = 44;
export const SSL_CTRL_SET_TLSEXT_SERVERNAME_CB = 53;
export const SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB = 72;
export const SSL_CTRL_CHAIN_CERT = 89;
export const SSL_CTRL_SET_MIN_PROTO_VERSION = 123;
export const SSL_MODE_RELEASE_BUFFERS = 0x10;
export const SSL_SESS_CACHE_OFF = 0;
export const SSL_OP_NO_RENEGOTIATION = 1n << 30n;
export const SSL_VERIFY_PEER = 1;
export const SSL_TLSEXT_ERR_OK = 0;
export const SSL_TLSEXT_ERR_ALERT_FATAL = 2;
export const OPENSSL_NPN_NEGOTIATED = 1;
export const X509_V_FLAG_CRL_CHECK = 0x4;
export const X509_V_FLAG_CRL_CHECK_ALL = 0x8;
export const BIO_CTRL_PENDING = 10;
export const SSL_ERROR_WANT_READ = 2;
export const TLSEXT_NAMETYPE_host_name = 0;
const ERR_LIB_PEM = 9;
const PEM_R_NO_START_LINE = 108;
/** OpenSSL 3's packing of an error code: library in bits 23–30, reason in the low 23 bits. */
const errorLib = (e: number): number => (e >>> 23) & 0xff;
const errorReason = (e: number): number => e & 0x7fffff;

export type Pointer = unknown;

export class LibsslError extends Error {}

/** Everything OpenSSL queued on this thread, as one line (and the queue emptied: node:crypto shares it). */
export function takeErrors(): string {
  const parts: string[] = [];
  const text = Buffer.alloc(256);
  for (let e = Number(api.ERR_get_error()); e !== 0; e = Number(api.ERR_get_error())) {
    api.ERR_error_string_n(e, text, text.length);
    parts.push(text.subarray(0, text.indexOf(0)).toString('latin1'));
  }
  api.ERR_clear_error();
  return parts.join('; ') || 'no OpenSSL error queued';
}

/** True when the last queued error is PEM's end of stream ("no start line"), which is how reading a PEM list ends. */
export function endOfPem(): boolean {
  const last = Number(api.ERR_peek_last_error());
  return errorLib(last) === ERR_LIB_PEM && errorReason(last) === PEM_R_NO_START_LINE;
}

/** Runs `read` on a read-only memory BIO over `pem` (OpenSSL reads the Buffer in place) and frees the BIO. */
export function readPem<T>(pem: Buffer, read: (bio: Pointer) => T): T {
  const bio = api.BIO_new_mem_buf(pem, pem.length);
  if (!bio) throw new LibsslError(`BIO_new_mem_buf: ${takeErrors()}`);
  try {
    return read(bio);
  } finally {
    api.BIO_free(bio);
  }
}

/** Every object a PEM buffer holds, read by `read` until the end of the stream; throws on one that does not parse. */
export function readPemList(pem: Buffer, what: string, read: (bio: Pointer) => Pointer, use: (x: Pointer) => void): void {
  readPem(pem, (bio) => {
    for (let x = read(bio); x; x = read(bio)) use(x);
    if (!endOfPem()) throw new LibsslError(`${what}: ${takeErrors()}`);
    api.ERR_clear_error();
  });
}
