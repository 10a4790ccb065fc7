// The one plaintext backend every bench peer forwards to, in its own process (apart from the load generator).
// The client's first line picks the behaviour: UP (discard, verify against the pattern, count), DOWN (send the pattern
// until closed), ECHO (send everything back), HS (answer OK and close: one request per connection), IDLE (answer OK, stay),
// GET <path> HTTP/1.x (an HTTP answer, then close: openssl s_time -www).
import net from 'node:net';
import { matchesPattern, now, patternAt, serve } from './common.mjs';

const stats = { upBytes: 0, upBadStreams: 0, badHeaders: 0, open: 0 };
const CHUNK = 64 * 1024;

function up(s, first) {
  let off = 0;
  let bad = false;
  const take = (d) => {
    if (!bad && !matchesPattern(d, off)) {
      bad = true;
      stats.upBadStreams++;
    }
    off += d.length;
    stats.upBytes += d.length;
  };
  if (first.length) take(first);
  s.on('data', take);
}

function down(s) {
  let off = 0;
  let closed = false;
  s.once('close', () => (closed = true));
  const pump = () => {
    while (!closed) {
      const ok = s.write(patternAt(off, CHUNK));
      off += CHUNK;
      if (!ok) return void s.once('drain', () => setImmediate(pump)); // a synchronous drain would starve IPC
    }
  };
  pump();
}

const reject = (s) => {
  stats.badHeaders++;
  s.destroy();
};

const server = net.createServer((s) => {
  stats.open++;
  s.setNoDelay(true);
  s.on('error', () => {});
  s.on('close', () => stats.open--);
  let head = Buffer.alloc(0);
  const onHead = (d) => {
    head = Buffer.concat([head, d]);
    const nl = head.indexOf(10);
    if (nl < 0) {
      if (head.length > 64) reject(s);
      return;
    }
    s.off('data', onHead);
    const kind = head.subarray(0, nl).toString();
    const rest = head.subarray(nl + 1);
    if (kind === 'UP') up(s, rest);
    else if (kind === 'DOWN') down(s);
    else if (kind === 'ECHO') {
      if (rest.length) s.write(rest);
      s.on('data', (x) => s.write(x));
    } else if (kind === 'HS') s.end('OK\n');
    else if (kind === 'IDLE') s.write('OK\n');
    else if (/^GET \S+ HTTP\/1\.[01]\r$/.test(kind)) s.end('HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nOK\n'); // openssl s_time -www
    else reject(s);
  };
  s.on('data', onHead);
});

const listening = new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', 1024, () => resolve(server.address().port));
});

serve({
  port: () => listening,
  stats: () => ({ ...stats, at: now() }),
  reset: () => {
    stats.upBytes = 0;
    stats.upBadStreams = 0;
  },
});
