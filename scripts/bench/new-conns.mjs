// A steady stream of new clients, forked apart from the load generator so its timing is its own: every `everyMs` a new
// TLS connection (full handshake, TLS 1.3, no resumption) sends 64 bytes and waits for their echo, then closes. Each
// sample is when it started and how long connect → handshake → echo took (the close after it is not timed); `take` returns the samples started in a window.
import tls from 'node:tls';
import { now, serve } from './common.mjs';

const OPTIONS = { host: '127.0.0.1', noDelay: true, rejectUnauthorized: false, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', session: undefined };
const PAYLOAD = Buffer.alloc(64, 0x61);
const TIMEOUT_MS = 30_000;

let timer;
let samples = [];

/** One new client: resolves with its sample ({ at, ms } or { at, error }); never rejects. */
function probe(port) {
  const at = now();
  return new Promise((resolve) => {
    let got = 0;
    const s = tls.connect({ ...OPTIONS, port });
    let settled = false;
    const done = (error) => {
      if (settled) return;
      settled = true;
      // A clean end (close_notify, then FIN) once the echo is back, so the proxies log no truncation; errors just drop.
      if (error) s.destroy();
      else (s.end(), s.setTimeout(TIMEOUT_MS, () => s.destroy()));
      resolve(error ? { at, error } : { at, ms: now() - at });
    };
    s.setTimeout(TIMEOUT_MS, () => done(`no echo within ${TIMEOUT_MS / 1000} s`));
    s.once('secureConnect', () => s.write(PAYLOAD));
    s.on('data', (d) => {
      got += d.length;
      if (got >= PAYLOAD.length) done();
    });
    s.once('error', (e) => done(e.message));
    s.once('close', () => got < PAYLOAD.length && done('closed before the echo'));
  });
}

serve({
  /** Starts a new client every `everyMs` on `port` (each runs to its end whatever the ones before it do). */
  start({ port, everyMs }) {
    clearInterval(timer);
    samples = [];
    timer = setInterval(() => void probe(port).then((x) => samples.push(x)), everyMs);
    return true;
  },
  /** Stops starting clients and waits for those under way. */
  async stop() {
    clearInterval(timer);
    await new Promise((r) => setTimeout(r, 2000));
    return true;
  },
  /** The samples of clients started within [from, to] (this process's clock: `now` in common.mjs is comparable). */
  take({ from, to }) {
    return samples.filter((x) => x.at >= from && x.at <= to);
  },
});
