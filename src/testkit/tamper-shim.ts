// Test support: a TCP shim between a TLS client and the proxy that can corrupt one client record after the handshake.
import net from 'node:net';

/**
 * Forwards both ways; in the client→proxy direction it parses TLS records and flips one byte in the
 * body of the `nth` record of type 23 (1-based; TLS 1.3's Finished is the 1st, so 2 is the first
 * application record).
 */
export async function tamperShim(target: number, nth: number): Promise<{ port: number; tampered: () => number; close(): void }> {
  let tampered = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((c) => {
    const up = net.connect(target, '127.0.0.1');
    for (const s of [c, up]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    }
    let buf = Buffer.alloc(0);
    let seen = 0;
    c.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 5) {
        const n = 5 + buf.readUInt16BE(3);
        if (buf.length < n) break;
        const rec = Buffer.from(buf.subarray(0, n));
        buf = buf.subarray(n);
        if (rec[0] === 23 && ++seen === nth) {
          rec[rec.length - 3]! ^= 0x40;
          tampered++;
        }
        up.write(rec);
      }
    });
    up.pipe(c);
    c.on('end', () => up.end());
    c.on('error', () => up.destroy());
    up.on('error', () => c.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const close = () => {
    for (const s of sockets) s.destroy();
    server.close();
  };
  return { port: (server.address() as net.AddressInfo).port, tampered: () => tampered, close };
}
