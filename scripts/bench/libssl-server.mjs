// The handshake ceiling for a Node.js terminator without node:tls: libssl (the OpenSSL inside the node binary, through
// koffi) driven over memory BIOs, one socket read in, its output out; each connection relayed to the bench backend.
// Only what s_time needs (TLS 1.3, one certificate, shared ticket keys so both workers resume), plus the per-handshake
// work Iron Socket cannot skip: the keylog callback's secrets copied out and wiped. A measurement, not a product.
// Usage: node libssl-server.mjs CERT KEY PORT BACKEND_PORT WORKERS
import cluster from 'node:cluster';
import crypto from 'node:crypto';
import net from 'node:net';
import koffi from 'koffi';

const [certFile, keyFile, port, backendPort, workers = '2'] = process.argv.slice(2);
// Each worker accepts on the shared socket itself, as HAProxy's threads do (no hop through the primary).
cluster.schedulingPolicy = cluster.SCHED_NONE;

if (cluster.isPrimary) {
  const ticketKeys = crypto.randomBytes(80);
  // Over IPC, never env or argv; asked for by each worker once it listens for the answer (a message sent earlier is lost).
  for (let i = 0; i < Number(workers); i++) {
    const worker = cluster.fork();
    worker.once('message', () => worker.send(ticketKeys.toString('base64')));
  }
  cluster.on('exit', () => process.exit(1));
  process.on('SIGTERM', () => process.exit(0));
} else {
  process.once('message', (keys) => serve(Buffer.from(keys, 'base64')));
  process.send('ready');
}

function serve(ticketKeys) {
  const lib = koffi.load(null); // the node binary itself: it exports libssl's and libcrypto's symbols
  const fn = (sig) => lib.func(sig);
  const TLS_server_method = fn('void *TLS_server_method()');
  const SSL_CTX_new = fn('void *SSL_CTX_new(void *)');
  const SSL_CTX_use_certificate_chain_file = fn('int SSL_CTX_use_certificate_chain_file(void *, const char *)');
  const SSL_CTX_use_PrivateKey_file = fn('int SSL_CTX_use_PrivateKey_file(void *, const char *, int)');
  const SSL_CTX_ctrl = fn('long SSL_CTX_ctrl(void *, int, long, void *)');
  const Keylog = koffi.proto('void Keylog(void *ssl, void *line)');
  const SSL_CTX_set_keylog_callback = fn('void SSL_CTX_set_keylog_callback(void *, Keylog *)');
  const SSL_new = fn('void *SSL_new(void *)');
  const SSL_free = fn('void SSL_free(void *)');
  const BIO_s_mem = fn('void *BIO_s_mem()');
  const BIO_new = fn('void *BIO_new(void *)');
  const BIO_write = fn('int BIO_write(void *, const uint8_t *, int)');
  const BIO_read = fn('int BIO_read(void *, _Out_ uint8_t *, int)');
  const BIO_ctrl_pending = fn('size_t BIO_ctrl_pending(void *)');
  const SSL_set_bio = fn('void SSL_set_bio(void *, void *, void *)');
  const SSL_set_accept_state = fn('void SSL_set_accept_state(void *)');
  const SSL_do_handshake = fn('int SSL_do_handshake(void *)');
  const SSL_get_error = fn('int SSL_get_error(void *, int)');
  const SSL_read = fn('int SSL_read(void *, _Out_ uint8_t *, int)');
  const SSL_write = fn('int SSL_write(void *, const uint8_t *, int)');
  const SSL_shutdown = fn('int SSL_shutdown(void *)');
  const strlen = fn('size_t strlen(void *)');
  const SSL_FILETYPE_PEM = 1;
  const SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59;
  const SSL_ERROR_WANT_READ = 2;

  const ctx = SSL_CTX_new(TLS_server_method());
  if (SSL_CTX_use_certificate_chain_file(ctx, certFile) !== 1) throw new Error(`cannot load ${certFile}`);
  if (SSL_CTX_use_PrivateKey_file(ctx, keyFile, SSL_FILETYPE_PEM) !== 1) throw new Error(`cannot load ${keyFile}`);
  SSL_CTX_ctrl(ctx, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, ticketKeys.length, ticketKeys);
  ticketKeys.fill(0);
  const keylog = koffi.register((_ssl, line) => {
    const secret = Buffer.from(koffi.view(line, Number(strlen(line)))); // what Iron Socket keeps: a copy, wiped after use
    secret.fill(0);
  }, koffi.pointer(Keylog));
  SSL_CTX_set_keylog_callback(ctx, keylog);

  const mem = BIO_s_mem();
  const buf = Buffer.alloc(16 * 1024 + 256);
  /** Everything OpenSSL wrote since the last call, as one Buffer (empty when nothing). */
  const output = (wbio) => {
    const parts = [];
    for (let n; (n = Number(BIO_ctrl_pending(wbio))) > 0;) parts.push(Buffer.from(buf.subarray(0, BIO_read(wbio, buf, Math.min(n, buf.length)))));
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  };

  net
    .createServer({ noDelay: true }, (client) => {
      let ssl = SSL_new(ctx);
      const rbio = BIO_new(mem);
      const wbio = BIO_new(mem);
      SSL_set_bio(ssl, rbio, wbio);
      SSL_set_accept_state(ssl);
      let backend;
      const end = () => {
        if (ssl) SSL_free(ssl);
        ssl = null;
        client.destroy();
        backend?.destroy();
      };
      const flush = () => {
        const out = output(wbio);
        if (out.length) client.write(out);
      };
      client.on('error', end).on('close', end);
      client.on('data', (data) => {
        if (!ssl) return;
        BIO_write(rbio, data, data.length);
        if (!backend) {
          const r = SSL_do_handshake(ssl);
          flush();
          if (r !== 1) return void (SSL_get_error(ssl, r) === SSL_ERROR_WANT_READ || end());
          backend = net.connect({ port: Number(backendPort), host: '127.0.0.1', noDelay: true });
          backend.on('error', end).on('close', () => {
            if (ssl) (SSL_shutdown(ssl), flush());
            end();
          });
          backend.on('data', (d) => {
            if (!ssl) return;
            SSL_write(ssl, d, d.length);
            flush();
          });
        }
        for (let n; ssl && (n = SSL_read(ssl, buf, buf.length)) > 0;) backend.write(Buffer.from(buf.subarray(0, n)));
        if (ssl) flush(); // a KeyUpdate answer, an alert
      });
    })
    .listen(Number(port), '127.0.0.1');
}
