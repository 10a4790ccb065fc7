// Test support: run inside the proxy's network namespace, connects to a backend with connectBackend (optionally from a transparent source) and checks an echo.
// Usage: node transparent-connect.js <backend-host> <backend-port> [<source-host>]; prints one JSON line.
import { sys } from '../kernel/libc.js';
import { EPOLLIN, Poller } from '../kernel/poller.js';
import { decodeSockaddr } from '../kernel/sockaddr.js';
import { BackendError, connectBackend } from '../edge/backend.js';

const [host, port, sourceHost] = process.argv.slice(2);
if (!host || !port) {
  console.error('usage: transparent-connect <backend-host> <backend-port> [<source-host>]');
  process.exit(2);
}
const payload = Buffer.from(`hello from ${sourceHost ?? 'the proxy'} ${process.pid}\n`);
const poller = new Poller();

/** Sends the payload and reads until as many bytes came back (or EOF). */
function echo(fd: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sent = sys.send(fd, payload, payload.length);
    if (sent !== payload.length) return reject(new Error(`send: ${sent}`));
    const got: Buffer[] = [];
    let n = 0;
    const finish = () => {
      poller.remove(fd);
      resolve(Buffer.concat(got));
    };
    poller.add(fd, EPOLLIN, () => {
      const buf = Buffer.alloc(4096);
      const r = sys.recv(fd, buf, buf.length);
      if (r === 0) return finish();
      if (r < 0) return;
      got.push(buf.subarray(0, r));
      n += r;
      if (n >= payload.length) finish();
    });
  });
}

try {
  const fd = await connectBackend(poller, { host, port: Number(port) }, 5000, undefined, sourceHost ? { source: { host: sourceHost, port: 0 } } : {});
  const local = decodeSockaddr(sys.getsockname(fd));
  const echoed = await echo(fd);
  sys.close(fd);
  console.log(JSON.stringify({ ok: true, local, sent: payload.toString(), echoed: echoed.toString() }));
} catch (e) {
  const reason = e instanceof BackendError ? e.reason : 'exception';
  console.log(JSON.stringify({ ok: false, reason, message: (e as Error).message }));
} finally {
  poller.close();
}
