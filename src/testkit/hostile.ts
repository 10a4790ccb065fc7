// Test support for hostile-input tests and the fuzz run: a real ClientHello captured from node:tls, and a transport that sends one byte per segment.
import { once } from 'node:events';
import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';

/** The first record a node:tls client sends (its ClientHello), captured by a plain TCP server that then hangs up. */
export async function captureClientHello(opts: tls.ConnectionOptions = {}): Promise<Buffer> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const got = new Promise<Buffer>((resolve, reject) => {
    server.once('connection', (s) => {
      let buf = Buffer.alloc(0);
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (buf.length >= 5 && buf.length >= 5 + buf.readUInt16BE(3)) {
          resolve(Buffer.from(buf.subarray(0, 5 + buf.readUInt16BE(3))));
          s.destroy();
        }
      });
      s.on('error', () => {});
      s.on('end', () => reject(new Error('client closed before a full ClientHello')));
    });
  });
  const port = (server.address() as net.AddressInfo).port;
  const c = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', rejectUnauthorized: false, ...opts });
  c.on('error', () => {});
  try {
    const hello = await got;
    if (hello[0] !== 22 || hello[5] !== 1) throw new Error('the captured record is not a ClientHello');
    return hello;
  } finally {
    c.destroy();
    server.close();
  }
}

/** A Duplex over `sock` that hands the kernel one byte per write, waiting for each (with TCP_NODELAY: one byte per segment). */
export function oneByteTransport(sock: net.Socket): Duplex {
  sock.setNoDelay(true);
  const d = new Duplex({
    write(chunk: Buffer, _enc, cb) {
      void (async () => {
        for (const byte of chunk) await new Promise<void>((res, rej) => sock.write(Buffer.from([byte]), (e) => (e ? rej(e) : res())));
      })().then(
        () => cb(),
        (e: Error) => cb(e),
      );
    },
    read() {
      sock.resume();
    },
    final(cb) {
      sock.end();
      cb();
    },
    destroy(e, cb) {
      sock.destroy();
      cb(e);
    },
  });
  sock.on('data', (b: Buffer) => {
    if (!d.push(b)) sock.pause();
  });
  sock.on('end', () => d.push(null));
  sock.on('error', (e) => d.destroy(e));
  return d;
}

/** A TLS record: content type, version, 2-byte length, body. */
export function tlsRecord(type: number, body: Buffer, version = 0x0303): Buffer {
  const h = Buffer.alloc(5);
  h[0] = type;
  h.writeUInt16BE(version, 1);
  h.writeUInt16BE(body.length & 0xffff, 3);
  return Buffer.concat([h, body]);
}
