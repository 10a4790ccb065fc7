// Test support: backends that say who they are, and one that reads a PROXY protocol header before echoing.
import net from 'node:net';
import { parseProxyHeader, type ParsedProxyHeader } from './proxy-protocol-parser.js';

export interface TestServer {
  port: number;
  accepted: number;
  close(): Promise<void>;
}

function serve(onSocket: (s: net.Socket) => void): Promise<TestServer> {
  const sockets = new Set<net.Socket>();
  const t: TestServer = { port: 0, accepted: 0, close: async () => {} };
  const server = net.createServer((s) => {
    t.accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    onSocket(s);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      t.port = (server.address() as net.AddressInfo).port;
      t.close = () =>
        new Promise((done) => {
          for (const s of sockets) s.destroy();
          server.close(() => done());
        });
      resolve(t);
    });
  });
}

/** Writes `tag` as soon as a connection opens, then echoes. */
export function taggedEcho(tag: string): Promise<TestServer> {
  return serve((s) => {
    s.write(tag);
    s.pipe(s);
  });
}

/** Reads a PROXY v1/v2 header first (kept in `headers`), then echoes whatever follows it. */
export async function proxyProtocolEcho(): Promise<TestServer & { headers: ParsedProxyHeader[]; errors: string[] }> {
  const headers: ParsedProxyHeader[] = [];
  const errors: string[] = [];
  const t = await serve((s) => {
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!complete(buf)) return;
      s.off('data', onData);
      try {
        const h = parseProxyHeader(buf);
        headers.push(h);
        const rest = buf.subarray(h.length);
        if (rest.length) s.write(rest);
        s.pipe(s);
      } catch (e) {
        errors.push((e as Error).message);
        s.destroy();
      }
    };
    s.on('data', onData);
  });
  return Object.assign(t, { headers, errors });
}

/** Whether `buf` holds a whole header (v2: 16 bytes plus its length; v1: a line). */
function complete(buf: Buffer): boolean {
  if (buf.length >= 16 && buf[0] === 0x0d && buf[1] === 0x0a) return buf.length >= 16 + buf.readUInt16BE(14);
  return buf.includes('\r\n') || buf.length > 107;
}
