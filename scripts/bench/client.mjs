// The bench load generator (node:tls clients), forked apart from the backend and the orchestrator so that the three
// do not share one event loop. Every client offers TLS 1.3 only and never resumes a session (no `session` is passed).
import { monitorEventLoopDelay } from 'node:perf_hooks';
import tls from 'node:tls';
import { matchesPattern, now, patternAt, serve } from './common.mjs';

const OPTIONS = { host: '127.0.0.1', noDelay: true, rejectUnauthorized: false, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', session: undefined };
const CHUNK = 64 * 1024;

/** A TLS connection that has sent `header`; `setup(s)` runs before any data can arrive. */
function open(port, header, setup = () => {}) {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ ...OPTIONS, port });
    s.setTimeout(15_000, () => s.destroy(new Error('no handshake within 15 s')));
    s.once('error', reject);
    s.once('secureConnect', () => {
      s.setTimeout(0);
      s.off('error', reject);
      s.setNoDelay(true);
      setup(s);
      s.write(header);
      resolve(s);
    });
  });
}

function closeAll(socks) {
  return Promise.all(socks.map((s) => (s.destroyed ? undefined : new Promise((r) => (s.once('close', r), s.destroy())))));
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

let run; // the current throughput run
let idle = [];
let streams = []; // the reload run's established streams
const lag = monitorEventLoopDelay({ resolution: 5 }); // how late this process ran: a gap no proxy could have avoided

/** The largest gap between two echoes (or since the last one) on each stream still up, since `streamsMark`. */
function gapsNow() {
  const t = now();
  return streams.filter((st) => !st.cut).map((st) => Math.max(st.maxGap, t - st.last));
}

serve({
  /** Opens `conns` streams in direction `dir` ('up': we send the pattern; 'down': we receive and verify it). */
  async tputOpen({ port, dir, conns }) {
    const r = (run = { dir, socks: [], bytes: 0, badStreams: 0, errors: [], stopped: false });
    const setup = (s) => {
      r.socks.push(s);
      s.on('error', (e) => r.errors.push(e.message));
      s.on('close', () => r.stopped || r.errors.push('connection closed during the run'));
      if (dir === 'down') {
        let off = 0;
        let bad = false;
        s.on('data', (d) => {
          if (!bad && !matchesPattern(d, off)) {
            bad = true;
            r.badStreams++;
          }
          off += d.length;
          r.bytes += d.length;
        });
      }
    };
    await Promise.all(Array.from({ length: conns }, () => open(port, dir === 'up' ? 'UP\n' : 'DOWN\n', setup)));
    if (dir === 'up')
      for (const s of r.socks) {
        let off = 0;
        const pump = () => {
          while (!r.stopped && !s.destroyed) {
            const ok = s.write(patternAt(off, CHUNK));
            off += CHUNK;
            r.bytes += CHUNK;
            if (!ok) return void s.once('drain', () => setImmediate(pump)); // let IPC in between
          }
        };
        pump();
      }
  },
  tputCount: () => ({ bytes: run.bytes, at: now() }),
  /** Stops sending (up) or counting errors (down); what was written still travels to the backend. */
  tputStop: () => {
    run.stopped = true;
    return { bytes: run.bytes, badStreams: run.badStreams, errors: run.errors.slice(0, 3) };
  },
  tputClose: () => closeAll(run?.socks ?? []),

  /** `conns` connections each doing 1 KiB request → 1 KiB echo back-to-back; round trips after the warm-up count. */
  async latency({ port, conns, warmupMs, ms }) {
    const req = patternAt(0, 1024);
    const samples = [];
    let bad = 0;
    const errors = [];
    const socks = await Promise.all(Array.from({ length: conns }, () => open(port, 'ECHO\n')));
    const start = now() + warmupMs;
    const end = start + ms;
    await Promise.all(
      socks.map(
        (s) =>
          new Promise((resolve) => {
            let got = [];
            let n = 0;
            let sent = 0;
            const fire = () => {
              if (now() >= end) return resolve();
              sent = now();
              s.write(req);
            };
            s.on('data', (d) => {
              got.push(d);
              n += d.length;
              if (n < req.length) return;
              if (n !== req.length || !Buffer.concat(got).equals(req)) bad++;
              if (sent >= start) samples.push(now() - sent);
              got = [];
              n = 0;
              fire();
            });
            s.on('error', (e) => (errors.push(e.message), resolve()));
            s.on('close', resolve);
            fire();
          }),
      ),
    );
    await closeAll(socks);
    samples.sort((a, b) => a - b);
    return { count: samples.length, p50: percentile(samples, 50), p99: percentile(samples, 99), bad, errors: errors.slice(0, 3) };
  },

  /** `concurrency` loops of connect → full handshake → "HS" → "OK" → close; those finishing after the warm-up count. */
  async handshakes({ port, concurrency, warmupMs, ms }) {
    const start = now() + warmupMs;
    const end = start + ms;
    let count = 0;
    const errors = [];
    const seen = new Set();
    let fingerprint;
    let checked = 0; // what was negotiated, on the first few only: reading it costs the client CPU
    const one = () =>
      new Promise((resolve) => {
        const s = tls.connect({ ...OPTIONS, port });
        let answer = '';
        let failed = false;
        const fail = (why) => {
          if (!failed) errors.push(why);
          failed = true;
          s.destroy();
        };
        const timer = setTimeout(() => fail('no answer within 5 s'), 5000);
        s.once('secureConnect', () => {
          if (checked++ < 20) {
            const eph = s.getEphemeralKeyInfo();
            seen.add(`${s.getProtocol()} ${s.getCipher().standardName} ${eph?.name ?? eph?.type ?? ''}`.trim());
            fingerprint ??= s.getPeerCertificate().fingerprint256;
          }
          s.write('HS\n');
        });
        s.on('data', (d) => {
          answer += d;
          if (answer === 'OK\n') s.end();
        });
        s.on('error', (e) => fail(e.message));
        s.once('close', () => {
          clearTimeout(timer);
          if (answer !== 'OK\n') fail(`closed after ${JSON.stringify(answer)}`);
          else if (!failed && now() >= start && now() <= end) count++;
          resolve();
        });
      });
    const loop = async () => {
      while (now() < end) await one();
    };
    await Promise.all(Array.from({ length: concurrency }, loop));
    return { count, errors: errors.length, firstErrors: [...new Set(errors)].slice(0, 3), seen: [...seen], fingerprint };
  },

  /** Opens `n` idle connections (each got the backend's OK, so the whole path is up), 100 at a time. */
  async idleOpen({ port, n }) {
    let errors = 0;
    let firstError;
    const one = async () => {
      try {
        const s = await open(port, 'IDLE\n', (s) => {
          s.on('error', () => {});
          idle.push(s);
        });
        await new Promise((resolve, reject) => {
          s.once('data', resolve);
          s.once('close', () => reject(new Error('closed before the backend answered')));
        });
      } catch (e) {
        errors++;
        firstError ??= e.message;
      }
    };
    for (let i = 0; i < n; i += 100) await Promise.all(Array.from({ length: Math.min(100, n - i) }, one));
    return { opened: idle.filter((s) => !s.destroyed).length, errors, firstError };
  },
  async idleClose() {
    await closeAll(idle);
    idle = [];
  },

  /**
   * Opens `n` echo streams (50 at a time), each writing `chunk` bytes every `periodMs` and checking every byte that
   * comes back against the pattern at its own offset (`seed` keeps the streams of different processes apart).
   * Anything that ends a stream before `streamsClose` (error, reset, EOF) marks it cut. Returns its local ports.
   */
  async streamsOpen({ port, n, periodMs, chunk, seed }) {
    let firstError;
    const one = async (i) => {
      const st = { base: (seed * 7919 + i * 4099) % 65521, sent: 0, received: 0, last: 0, maxGap: 0, bad: false, cut: '', timer: undefined };
      const cut = (why) => {
        if (st.closing || st.cut) return;
        st.cut = why;
        clearInterval(st.timer);
      };
      try {
        st.sock = await open(port, 'ECHO\n', (s) => {
          s.on('data', (d) => {
            if (!st.bad && !matchesPattern(d, st.base + st.received)) st.bad = true;
            st.received += d.length;
            const t = now();
            st.maxGap = Math.max(st.maxGap, t - st.last);
            st.last = t;
          });
          s.on('error', (e) => cut(e.code ?? e.message));
          s.on('end', () => cut('EOF from the proxy'));
          s.on('close', () => cut('closed'));
        });
      } catch (e) {
        firstError ??= e.message;
        return;
      }
      st.last = now();
      streams.push(st);
      st.timer = setInterval(() => {
        if (st.sock.destroyed) return;
        st.sock.write(patternAt(st.base + st.sent, chunk));
        st.sent += chunk;
      }, periodMs);
    };
    for (let i = 0; i < n; i += 50) await Promise.all(Array.from({ length: Math.min(50, n - i) }, (_, j) => one(i + j)));
    lag.enable();
    return { opened: streams.length, ports: streams.map((st) => st.sock.localPort), firstError };
  },
  /** Starts a measuring window: forgets the gaps seen so far. */
  streamsMark() {
    for (const st of streams) st.maxGap = 0;
    lag.reset();
  },
  /** Over the window since `streamsMark`: the largest gap on any stream still up, ms, and this process's own lag. */
  streamsGaps() {
    const gaps = gapsNow();
    return { maxGapMs: gaps.length ? Math.max(...gaps) : 0, loopLagMs: lag.max / 1e6, up: gaps.length, cut: streams.length - gaps.length };
  },
  /** Stops writing; then waits (up to `timeoutMs`) until every stream still up got all its bytes back. */
  async streamsDrain({ timeoutMs }) {
    for (const st of streams) clearInterval(st.timer);
    const end = now() + timeoutMs;
    while (now() < end && streams.some((st) => !st.cut && st.received < st.sent)) await new Promise((r) => setTimeout(r, 20));
    const sum = (f) => streams.reduce((n, st) => n + f(st), 0);
    const reasons = [...new Set(streams.filter((st) => st.cut).map((st) => st.cut))];
    return {
      sent: sum((st) => st.sent),
      received: sum((st) => st.received),
      lostOnUncut: sum((st) => (st.cut ? 0 : st.sent - st.received)),
      badStreams: sum((st) => (st.bad ? 1 : 0)),
      cut: sum((st) => (st.cut ? 1 : 0)),
      reasons: reasons.slice(0, 3),
    };
  },
  async streamsClose() {
    for (const st of streams) (clearInterval(st.timer), (st.closing = true));
    await closeAll(streams.map((st) => st.sock));
    streams = [];
    lag.disable();
  },
});
