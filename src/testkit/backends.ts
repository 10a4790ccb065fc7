// Test support: plain-TCP backends (echo, exact-length echo, HTTP, deterministic streams) and verifiable byte streams.
import crypto from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';

export interface Backend {
  port: number;
  /** Connections accepted so far. */
  accepted: number;
  close(): Promise<void>;
}

function listen(server: net.Server | http.Server, port = 0): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port));
  });
}

function closer(server: net.Server, sockets: Set<net.Socket>): () => Promise<void> {
  return () =>
    new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
}

/** Echoes everything; ends its side when the client ends (half-close aware). */
export async function echoBackend(): Promise<Backend> {
  const sockets = new Set<net.Socket>();
  const b = { port: 0, accepted: 0, close: async () => {} };
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    b.accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    s.pipe(s);
  });
  b.port = await listen(server);
  b.close = closer(server, sockets);
  return b;
}

/** Reads exactly `n` bytes, echoes them, then closes (so a client waiting for EOF terminates). */
export async function exactEchoBackend(n: number): Promise<Backend> {
  const sockets = new Set<net.Socket>();
  const b = { port: 0, accepted: 0, close: async () => {} };
  const server = net.createServer((s) => {
    b.accepted++;
    sockets.add(s);
    let got = 0;
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    s.on('data', (d: Buffer) => {
      got += d.length;
      s.write(d);
      if (got >= n) s.end();
    });
  });
  b.port = await listen(server);
  b.close = closer(server, sockets);
  return b;
}

/** Answers every HTTP request with `body`. */
export async function httpBackend(body: Buffer, port = 0): Promise<Backend> {
  const sockets = new Set<net.Socket>();
  const b = { port: 0, accepted: 0, close: async () => {} };
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
    res.end(body);
  });
  server.on('connection', (s) => {
    b.accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  b.port = await listen(server, port);
  b.close = closer(server, sockets);
  return b;
}

/** Deterministic pseudo-random bytes at any offset: the AES-128-CTR keystream under a key derived from `seed`. */
export function streamChunk(seed: string, offset: number, length: number): Buffer {
  const key = crypto.createHash('sha256').update(seed).digest().subarray(0, 16);
  const iv = Buffer.alloc(16);
  iv.writeBigUInt64BE(BigInt(Math.floor(offset / 16)), 8);
  const skip = offset % 16;
  const c = crypto.createCipheriv('aes-128-ctr', key, iv);
  const out = c.update(Buffer.alloc(skip + length));
  return out.subarray(skip);
}

/** Writes `total` deterministic bytes to a writable with backpressure, in 64 KiB chunks. */
export async function writeStream(w: NodeJS.WritableStream, seed: string, total: number): Promise<void> {
  const CH = 64 * 1024;
  for (let off = 0; off < total; off += CH) {
    const chunk = streamChunk(seed, off, Math.min(CH, total - off));
    if (!w.write(chunk)) await new Promise((r) => w.once('drain', r));
  }
}

/** Incrementally checks that received bytes equal the deterministic stream, and hashes them. */
export class StreamVerifier {
  received = 0;
  mismatchAt = -1;
  private readonly hash = crypto.createHash('sha256');
  constructor(private readonly seed: string) {}
  push(d: Buffer): void {
    if (this.mismatchAt < 0 && !d.equals(streamChunk(this.seed, this.received, d.length))) {
      const expect = streamChunk(this.seed, this.received, d.length);
      let i = 0;
      while (d[i] === expect[i]) i++;
      this.mismatchAt = this.received + i;
    }
    this.hash.update(d);
    this.received += d.length;
  }
  digest(): string {
    return this.hash.digest('hex');
  }
}

export function expectedDigest(seed: string, total: number): string {
  const h = crypto.createHash('sha256');
  for (let off = 0; off < total; off += 1 << 20) h.update(streamChunk(seed, off, Math.min(1 << 20, total - off)));
  return h.digest('hex');
}

/**
 * Backend for verified bidirectional streams: the first line the client sends is `SEED <n>\n`;
 * the backend then verifies the client's next n bytes against stream(seed+'/up') while sending
 * n bytes of stream(seed+'/down'), and reports each finished verification via `results`.
 */
export async function streamBackend(): Promise<Backend & { results: Map<string, { received: number; ok: boolean }> }> {
  const sockets = new Set<net.Socket>();
  const results = new Map<string, { received: number; ok: boolean }>();
  const b = { port: 0, accepted: 0, results, close: async () => {} };
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    b.accepted++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    let head = Buffer.alloc(0);
    let verifier: StreamVerifier | undefined;
    let seed = '';
    let total = 0;
    s.on('data', (d: Buffer) => {
      if (!verifier) {
        head = Buffer.concat([head, d]);
        const nl = head.indexOf(10);
        if (nl < 0) return;
        const m = /^SEED (\S+) (\d+)$/.exec(head.subarray(0, nl).toString());
        if (!m) return s.destroy();
        seed = m[1]!;
        total = Number(m[2]);
        verifier = new StreamVerifier(`${seed}/up`);
        d = head.subarray(nl + 1);
        void writeStream(s, `${seed}/down`, total).then(() => s.end());
      }
      if (d.length) verifier.push(d);
    });
    s.on('end', () => {
      if (verifier) results.set(seed, { received: verifier.received, ok: verifier.mismatchAt < 0 && verifier.received === total });
    });
  });
  b.port = await listen(server);
  b.close = closer(server, sockets);
  return b;
}

/** A backend whose next accepted connection runs a test's handler; all others echo (half-close aware). */
export async function scriptedBackend(port = 0) {
  const handlers: Array<(s: net.Socket) => void> = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    const h = handlers.shift();
    if (h) h(s);
    else s.pipe(s);
  });
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    next: (h: (s: net.Socket) => void) => void handlers.push(h),
    close: () => new Promise<void>((r) => (sockets.forEach((s) => s.destroy()), server.close(() => r()))),
  };
}

/**
 * A backend that answers the first bytes with "ack" and, once the client's side ends, sends `chunks`
 * chunks of 4 KiB of stream(`seed`) 50 ms apart: the first half at once, the rest after `gate`
 * resolves (an upgrade, a restart), then ends.
 */
export async function halfCloseBackend(seed: string, chunks: number, gate: Promise<void>): Promise<{ port: number; close(): void }> {
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {}); // the client side reports what went wrong
    s.once('data', () => s.write('ack'));
    s.resume();
    s.on('end', () => {
      let i = 0;
      const send = () => {
        s.write(streamChunk(seed, i * 4096, 4096));
        if (++i === chunks) return void s.end();
        if (i === chunks / 2) return void gate.then(() => setTimeout(send, 50));
        setTimeout(send, 50);
      };
      send();
    });
  });
  const port = await listen(server);
  return { port, close: () => server.close() };
}
