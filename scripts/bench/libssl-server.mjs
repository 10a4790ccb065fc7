// The handshake ceiling for a Node.js terminator without node:tls: src/handshake/libssl.ts (the node binary's own
// OpenSSL over memory BIOs, fed one record at a time, secrets collected and wiped) for the handshake, then the record
// layer (src/record) with the derived keys and counted sequence numbers to relay each connection to the bench backend,
// on plain `net` sockets. Only what s_time needs: TLS 1.3, one certificate, ticket keys shared by the workers.
// A measurement of the design, not a product: no limits, timeouts, alerts or logging.
// Usage: node libssl-server.mjs CERT KEY PORT BACKEND_PORT WORKERS
import cluster from 'node:cluster';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { LibsslServer } from '../../dist/handshake/libssl.js';
import { TicketKeyring } from '../../dist/handshake/ticket-keys.js';
import { deriveDirectionKeys } from '../../dist/record/keys.js';
import { ContentType, MAX_PLAINTEXT, RecordProtection } from '../../dist/record/aead.js';
import { suiteByName } from '../../dist/record/suites.js';

const [certFile, keyFile, port, backendPort, workers = '2'] = process.argv.slice(2);
// Each worker accepts on the shared socket itself, as HAProxy's threads do (no hop through the primary).
cluster.schedulingPolicy = cluster.SCHED_NONE;

if (cluster.isPrimary) {
  // Structured clone over IPC: the ticket keys travel as bytes, never as a string (JSON would make one).
  cluster.setupPrimary({ serialization: 'advanced' });
  const ticketKeys = crypto.randomBytes(48); // one key in HAProxy's format: name | AES | HMAC
  // Over IPC, never env or argv; asked for by each worker once it listens for the answer (a message sent earlier is
  // lost). send() serialises at once: the keys are zeroed here when the last worker has its copy.
  let waiting = Number(workers);
  for (let i = 0; i < Number(workers); i++) {
    const worker = cluster.fork();
    worker.once('message', () => {
      worker.send(ticketKeys);
      if (--waiting === 0) ticketKeys.fill(0);
    });
  }
  cluster.on('exit', () => process.exit(1));
  process.on('SIGTERM', () => process.exit(0));
} else {
  process.once('message', (keys) => serve(Buffer.from(keys.buffer, keys.byteOffset, keys.byteLength)));
  process.on('SIGINT', () => process.exit(0)); // a clean exit (node --cpu-prof writes its profile then)
  process.send('ready');
}

const readFile = (file) => fs.readFileSync(file);

function serve(ticketKeys) {
  const key = readFile(keyFile);
  // The keyring owns the keys' bytes from here (and reads them on each ticket).
  const tickets = new TicketKeyring({ keys: new Uint8Array(ticketKeys.buffer, ticketKeys.byteOffset, ticketKeys.byteLength), encrypt: 0, lifetimeS: 7200 });
  const server = new LibsslServer({ pairs: [{ certificateChain: readFile(certFile), key }], minVersion: 'TLSv1.3', tickets });
  key.fill(0);
  const CLOSE_NOTIFY = Buffer.from([1, 0]);
  /** How many whole records `out` holds. */
  const records = (out) => {
    let n = 0;
    for (let at = 0; at + 5 <= out.length; at += 5 + out.readUInt16BE(at + 3)) n++;
    return n;
  };

  net
    .createServer({ noDelay: true }, (client) => {
      const hs = server.accept();
      let rx;
      let tx;
      let backend;
      let pending = Buffer.alloc(0);
      const end = () => {
        if (client.writableEnded && !client.destroyed) return void client.once('close', end);
        hs.free();
        rx?.wipe();
        tx?.wipe();
        client.destroy();
        backend?.destroy();
      };
      const established = (tickets) => {
        const suite = suiteByName(hs.cipher, 'TLSv1.3');
        const { rx: r, tx: t } = deriveDirectionKeys(suite, {
          version: 'TLSv1.3',
          clientTrafficSecret: hs.secrets.clientTrafficSecret0,
          serverTrafficSecret: hs.secrets.serverTrafficSecret0,
        });
        rx = new RecordProtection(suite, r.key, r.iv, 0n);
        tx = new RecordProtection(suite, t.key, t.iv, BigInt(tickets)); // OpenSSL's tickets went out under this key
        for (const b of [r.key, r.iv, t.key, t.iv]) b.fill(0);
        hs.free();
        backend = net.connect({ port: Number(backendPort), host: '127.0.0.1', noDelay: true });
        backend.on('error', end).on('close', () => {
          client.end(tx.seal(ContentType.alert, CLOSE_NOTIFY)); // without it s_time drops the session as not resumable
          end();
        });
        backend.on('data', (d) => {
          for (let at = 0; at < d.length; at += MAX_PLAINTEXT) client.write(tx.seal(ContentType.application_data, d.subarray(at, at + MAX_PLAINTEXT)));
        });
      };
      client.on('error', end).on('close', end);
      client.on('data', (data) => {
        pending = pending.length ? Buffer.concat([pending, data]) : data;
        while (pending.length >= 5 && pending.length >= 5 + pending.readUInt16BE(3)) {
          const len = 5 + pending.readUInt16BE(3);
          const record = pending.subarray(0, len);
          pending = pending.subarray(len);
          if (!rx) {
            const step = hs.feed(record);
            if (step.output.length) client.write(step.output);
            if (step.state === 'failed') return end();
            if (step.state === 'established') established(records(step.output));
            continue;
          }
          const { type, plaintext } = rx.open(record.subarray(0, 5), record.subarray(5));
          if (type === ContentType.application_data) backend.write(plaintext);
          else return end(); // an alert (close_notify) or a post-handshake message: not measured here
        }
      });
    })
    .listen(Number(port), '127.0.0.1');
}
