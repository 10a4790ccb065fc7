// Loads certificates, private keys, a client CA bundle and CRLs into an OpenSSL server context.
import * as C from './libssl-api.js';
import { api, LibsslError, takeErrors, readPem, readPemList, type Pointer } from './libssl-api.js';

/** Adds one certificate, its chain and its key (OpenSSL keeps one per key type; the chain goes with the last certificate set). */
export function usePair(ctx: Pointer, chain: Buffer, key: Buffer): void {
  let first = true;
  readPemList(
    chain,
    'certificate chain',
    (bio) => api.PEM_read_bio_X509(bio, null, null, null),
    (x) => {
      if (first) {
        first = false;
        const used = api.SSL_CTX_use_certificate(ctx, x);
        api.X509_free(x); // the context holds its own reference
        if (used !== 1) throw new LibsslError(`certificate: ${takeErrors()}`);
      } else if (Number(api.SSL_CTX_ctrl(ctx, C.SSL_CTRL_CHAIN_CERT, 0, x)) !== 1) {
        api.X509_free(x); // add0 took it only on success
        throw new LibsslError(`chain: ${takeErrors()}`);
      }
    },
  );
  if (first) throw new LibsslError('certificate: no certificate in the PEM');
  readPem(key, (bio) => {
    // An empty passphrase, never OpenSSL's default callback (which would prompt on a terminal): an encrypted key fails.
    const pkey = api.PEM_read_bio_PrivateKey(bio, null, null, '');
    if (!pkey) throw new LibsslError(`private key: ${takeErrors()}`);
    const used = api.SSL_CTX_use_PrivateKey(ctx, pkey);
    api.EVP_PKEY_free(pkey);
    if (used !== 1 || api.SSL_CTX_check_private_key(ctx) !== 1) throw new LibsslError(`private key: ${takeErrors()}`);
  });
}

/** Trusts the CA bundle (and names its subjects in the CertificateRequest), checks CRLs when given, asks for a certificate. */
export function verifyClients(ctx: Pointer, ca: Buffer, crls: string[], verify: bigint): void {
  const store = api.SSL_CTX_get_cert_store(ctx);
  readPemList(
    ca,
    'client CA bundle',
    (bio) => api.PEM_read_bio_X509(bio, null, null, null),
    (x) => {
      const added = Number(api.X509_STORE_add_cert(store, x)) === 1 && Number(api.SSL_CTX_add_client_CA(ctx, x)) === 1;
      api.X509_free(x); // both took their own reference
      if (!added) throw new LibsslError(`client CA bundle: ${takeErrors()}`);
    },
  );
  for (const pem of crls) {
    readPemList(
      Buffer.from(pem),
      'CRL',
      (bio) => api.PEM_read_bio_X509_CRL(bio, null, null, null),
      (crl) => {
        const added = Number(api.X509_STORE_add_crl(store, crl)) === 1;
        api.X509_CRL_free(crl);
        if (!added) throw new LibsslError(`CRL: ${takeErrors()}`);
      },
    );
  }
  if (crls.length > 0) api.X509_STORE_set_flags(store, C.X509_V_FLAG_CRL_CHECK | C.X509_V_FLAG_CRL_CHECK_ALL);
  api.SSL_CTX_set_verify(ctx, C.SSL_VERIFY_PEER, verify);
}
