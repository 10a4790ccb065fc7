// Test support for 0-RTT: a session ticket that allows early data (from openssl s_server), and a TCP tap that records the client's TLS records.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

/**
 * Runs `openssl` with `args`, resolving with its stdout and stderr once it exits and both are read ('close': 'exit'
 * may come before the last output) — killed after `timeoutMs`.
 */
export function openssl(args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<{ code: number | null; out: string }> {
  const child = spawn('openssl', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString('latin1')));
  child.stderr.on('data', (d: Buffer) => (out += d.toString('latin1')));
  child.stdin.end(opts.input ?? '');
  const t = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 20_000);
  return new Promise((resolve) =>
    child.once('close', (code) => {
      clearTimeout(t);
      resolve({ code, out });
    }),
  );
}

/** Resolves with the first `re` match in what `child` has printed (stdout and stderr), or rejects when it exits first. */
export function waitForOutput(child: ChildProcess, re: RegExp, timeoutMs = 20_000): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const done = (f: () => void) => {
      clearTimeout(t);
      child.stdout?.off('data', onData);
      child.stderr?.off('data', onData);
      child.off('exit', onExit);
      f();
    };
    const onData = (d: Buffer) => {
      seen += d.toString('latin1');
      const m = re.exec(seen);
      if (m) done(() => resolve(m));
    };
    const onExit = (code: number | null) => done(() => reject(new Error(`openssl exited (${code}) before printing ${re}:\n${seen}`)));
    const t = setTimeout(() => done(() => reject(new Error(`no ${re} within ${timeoutMs} ms:\n${seen}`))), timeoutMs);
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', onExit);
  });
}

/**
 * A TLS 1.3 session for `localhost` whose ticket allows 0-RTT (Max Early Data 16384), written to `<dir>/session.pem`:
 * `openssl s_server -early_data` issues it, `openssl s_client -sess_out` keeps it. Any other server (the proxy) cannot
 * decrypt that ticket, so a client resuming with it offers early data that the server must refuse.
 */
export async function earlyDataSession(dir: string, cert: { certFile: string; keyFile: string }): Promise<string> {
  const file = path.join(dir, 'session.pem');
  const server = spawn('openssl', ['s_server', '-accept', '127.0.0.1:0', '-cert', cert.certFile, '-key', cert.keyFile, '-early_data', '-naccept', '1'], {
    // s_server ends the connection at EOF on its stdin: keep that open (a pipe) until the end.
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  try {
    const port = Number((await waitForOutput(server, /ACCEPT 127\.0\.0\.1:(\d+)/))[1]);
    const client = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'localhost', '-tls1_3', '-sess_out', file], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    try {
      client.stdin.write('ticket, please\n');
      // The server sends its tickets after the handshake; s_client writes the session file when one arrives (its
      // stdout, a pipe, is block-buffered: what it prints shows only when it exits).
      const end = Date.now() + 20_000;
      for (;;) {
        if (fs.existsSync(file) && /Max Early Data: 16384/.test((await openssl(['sess_id', '-in', file, '-noout', '-text'])).out)) return file;
        if (client.exitCode !== null || Date.now() > end) throw new Error('s_client got no session ticket allowing early data from s_server');
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      client.stdin.end();
      if (client.exitCode === null) await once(client, 'exit');
    }
  } finally {
    server.kill();
  }
}

/** One TLS record as the client sent it: content type and the whole record (header included). */
export interface TappedRecord {
  type: number;
  bytes: Buffer;
}

/** Forwards TCP connections on its own port to `targetPort`, keeping every byte each client sent. */
export async function recordTap(targetPort: number) {
  const sent: Buffer[][] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    const mine: Buffer[] = [];
    sent.push(mine);
    const upstream = net.connect({ port: targetPort, host: '127.0.0.1', allowHalfOpen: true });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.once('close', () => sockets.delete(s));
    }
    client.on('data', (d: Buffer) => {
      mine.push(Buffer.from(d));
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => client.write(d));
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    const both = () => (client.destroy(), upstream.destroy());
    client.on('error', both);
    upstream.on('error', both);
    client.on('close', () => upstream.end());
    upstream.on('close', () => client.end());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    /** The records the n-th client connection sent, in order (a partial record at the end is left out). */
    records(n = 0): TappedRecord[] {
      let buf = Buffer.concat(sent[n] ?? []);
      const out: TappedRecord[] = [];
      while (buf.length >= 5 && buf.length >= 5 + buf.readUInt16BE(3)) {
        const len = 5 + buf.readUInt16BE(3);
        out.push({ type: buf[0]!, bytes: buf.subarray(0, len) });
        buf = buf.subarray(len);
      }
      return out;
    },
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}
