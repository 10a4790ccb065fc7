// Test support: a real node:tls handshake, then records we write ourselves with the client's keys (crafted, fragmented, floods) and the server's records opened.
import { once } from 'node:events';
import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { KeylogCollector } from '../handshake/keylog.js';
import { parseHello } from '../handshake/hello.js';
import { RecordError, RecordProtection } from '../record/aead.js';
import { deriveDirectionKeys, tls13NextTrafficSecret, tls13TrafficKeys } from '../record/keys.js';
import { suiteByName, type CipherSuite } from '../record/suites.js';

export interface ScriptOptions {
  version: 'TLSv1.2' | 'TLSv1.3';
  /** node:tls `ciphers` (TLS 1.2 names, or TLS 1.3 suite names). */
  ciphers?: string;
  /** TLS 1.2: send our Finished as one record per byte (16 records). */
  splitFinished?: boolean;
  /** Keep our side open after the server's FIN (as a client that still has its close_notify to send); default: end it. */
  allowHalfOpen?: boolean;
}

export type ServerRecord = { type: number; plaintext: Buffer };
/** How the server's side ended, once it has: a FIN, or a reset. */
export type Ending = 'fin' | 'reset';

export interface ScriptedClient {
  version: 'TLSv1.2' | 'TLSv1.3';
  /** Our end's port (the proxy logs the client as 127.0.0.1:port). */
  localPort: number;
  /** The TCP socket (for a sender that must wait for 'drain'). */
  socket: net.Socket;
  /** Whether the server's side has ended (FIN or reset). */
  isEnded(): boolean;
  suite: CipherSuite;
  /** A protected record of `type` under our current key (TLS 1.3: inner type, `padding` zero bytes). */
  seal(type: number, plaintext: Buffer, padding?: number): Buffer;
  send(bytes: Buffer): void;
  /** Leaves what arrives in the kernel for `ms`, or until resumeReading() (as a slow client would): an RST in that time destroys it. */
  pauseReading(ms?: number): void;
  resumeReading(): void;
  /** TLS 1.3: switch our sending key to the next one (after sending a KeyUpdate). */
  nextSendKey(): void;
  /** The next record from the server (KeyUpdates are applied, tickets skipped); undefined once it has ended. */
  next(timeoutMs?: number): Promise<ServerRecord | undefined>;
  /** Application data received so far (and the next records' until `want` bytes arrived). */
  readData(want: number, timeoutMs?: number): Promise<Buffer>;
  /** Reads until an alert or the end (data seen on the way is kept for readData): the alert's level and description, and how the connection ended if it has. */
  alert(timeoutMs?: number): Promise<{ alert?: [number, number]; ending?: Ending }>;
  /** Resolves with how the connection ended, or undefined if it is still open after `ms`. */
  ended(ms: number): Promise<Ending | undefined>;
  destroy(): void;
}

const CCS = 20;

/** Connects to `port`, completes a handshake with node:tls, and hands back the connection speaking raw records. */
export async function scriptedClient(port: number, opts: ScriptOptions): Promise<ScriptedClient> {
  const sock = net.connect({ port, host: '127.0.0.1', allowHalfOpen: opts.allowHalfOpen ?? false });
  sock.setNoDelay(true);
  await once(sock, 'connect');
  const keylog = new KeylogCollector();
  const fromServer: Buffer[] = []; // whole records, as sent, from the start
  let inbound = Buffer.alloc(0);
  let detached = false;
  let ending: Ending | undefined;
  const waiters = new Set<() => void>();
  const wake = () => {
    for (const w of [...waiters]) w();
  };

  let clientPartial = Buffer.alloc(0);
  let ccsSent = false;
  let finishedFragments = 0;

  const splitFinished = (record: Buffer): Buffer => {
    const hello = fromServer.find((r) => r[0] === 22 && r[5] === 2);
    const suite = suiteByName(tlsSocket.getCipher().name, 'TLSv1.2');
    if (!hello || !suite || !keylog.masterSecret || !keylog.clientRandom) throw new Error('TLS 1.2 keys not known when our Finished was written');
    const keys = deriveDirectionKeys(
      suite,
      { version: 'TLSv1.2', masterSecret: keylog.masterSecret, clientRandom: keylog.clientRandom, serverRandom: parseHello(hello).random },
      'client',
    );
    const finished = new RecordProtection(suite, keys.tx.key, keys.tx.iv, 0n).open(record.subarray(0, 5), record.subarray(5)).plaintext;
    const sealer = new RecordProtection(suite, keys.tx.key, keys.tx.iv, 0n);
    finishedFragments = finished.length;
    return Buffer.concat([...finished].map((b) => sealer.seal(22, Buffer.from([b]))));
  };

  const transport = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      // Whole records only: a split Finished is rewritten once its record is complete.
      let buf = Buffer.concat([clientPartial, chunk]);
      while (buf.length >= 5 && buf.length >= 5 + buf.readUInt16BE(3)) {
        const n = 5 + buf.readUInt16BE(3);
        let rec: Buffer = Buffer.from(buf.subarray(0, n));
        buf = buf.subarray(n);
        if (opts.splitFinished && ccsSent && rec[0] === 22 && finishedFragments === 0) rec = splitFinished(rec);
        if (rec[0] === CCS) ccsSent = true;

        sock.write(rec);
      }
      clientPartial = Buffer.from(buf);
      cb();
    },
  });
  sock.on('data', (d: Buffer) => {
    inbound = Buffer.concat([inbound, d]);
    while (inbound.length >= 5 && inbound.length >= 5 + inbound.readUInt16BE(3)) {
      const n = 5 + inbound.readUInt16BE(3);
      const rec = Buffer.from(inbound.subarray(0, n));
      inbound = inbound.subarray(n);
      fromServer.push(rec);
      if (!detached) transport.push(rec);
    }
    wake();
  });
  sock.on('end', () => {
    ending ??= 'fin';
    wake();
  });
  sock.on('error', (e: NodeJS.ErrnoException) => {
    ending ??= e.code === 'ECONNRESET' ? 'reset' : 'fin';
    wake();
  });
  sock.on('close', () => {
    ending ??= 'fin';
    wake();
  });

  const tlsSocket = tls.connect({
    socket: transport as unknown as net.Socket,
    servername: 'localhost',
    rejectUnauthorized: false,
    minVersion: opts.version,
    maxVersion: opts.version,
    ...(opts.ciphers ? (opts.version === 'TLSv1.3' ? { ciphersuites: opts.ciphers } : { ciphers: opts.ciphers }) : {}),
  });
  tlsSocket.on('keylog', (line: Buffer) => keylog.add(Buffer.from(line)));
  tlsSocket.on('error', () => {});
  await once(tlsSocket, 'secureConnect');
  detached = true;
  const suite = suiteByName(tlsSocket.getCipher().name, opts.version);
  if (!suite) throw new Error(`no suite for ${tlsSocket.getCipher().name}`);

  // Keys, and where the server's application-key records start.
  let secrets: { client: Buffer; server: Buffer } | undefined;
  let tx: RecordProtection;
  let rx: RecordProtection;
  let firstServer: number;
  if (opts.version === 'TLSv1.3') {
    secrets = { client: Buffer.from(keylog.clientTrafficSecret0!), server: Buffer.from(keylog.serverTrafficSecret0!) };
    const c = tls13TrafficKeys(suite, secrets.client);
    const s = tls13TrafficKeys(suite, secrets.server);
    tx = new RecordProtection(suite, c.key, c.iv, 0n);
    rx = new RecordProtection(suite, s.key, s.iv, 0n);
    // Give the server a moment for its tickets, then find the first record that opens under its application key.
    await new Promise((r) => setTimeout(r, 50));
    firstServer = fromServer.findIndex((r) => {
      try {
        new RecordProtection(suite, s.key, s.iv, 0n).open(r.subarray(0, 5), r.subarray(5));
        return true;
      } catch (e) {
        if (e instanceof RecordError) return false;
        throw e;
      }
    });
    if (firstServer < 0) firstServer = fromServer.length;
  } else {
    const hello = fromServer.find((r) => r[0] === 22 && r[5] === 2)!;
    const keys = deriveDirectionKeys(
      suite,
      { version: 'TLSv1.2', masterSecret: keylog.masterSecret!, clientRandom: keylog.clientRandom!, serverRandom: parseHello(hello).random },
      'client',
    );
    tx = new RecordProtection(suite, keys.tx.key, keys.tx.iv, BigInt(opts.splitFinished ? finishedFragments : 1));
    rx = new RecordProtection(suite, keys.rx.key, keys.rx.iv, 0n);
    firstServer = fromServer.findIndex((r) => r[0] === CCS) + 1; // the server's Finished, then its data
  }
  let cursor = firstServer;
  const data: Buffer[] = [];

  const rekey = (which: 'client' | 'server') => {
    const next = tls13NextTrafficSecret(suite, secrets![which]);
    secrets![which] = next;
    const k = tls13TrafficKeys(suite, next);
    (which === 'client' ? tx : rx).rekey(k.key, k.iv);
  };

  const waitFor = (ms: number) =>
    new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t);
        waiters.delete(done);
        resolve();
      };
      const t = setTimeout(done, ms);
      waiters.add(done);
    });

  const next = async (timeoutMs = 10_000): Promise<ServerRecord | undefined> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      while (cursor < fromServer.length) {
        const r = fromServer[cursor++]!;
        const opened = rx.open(r.subarray(0, 5), r.subarray(5));
        const rec = { type: opened.type, plaintext: Buffer.from(opened.plaintext) };
        if (rec.type === 22 && rec.plaintext[0] === 4) continue; // NewSessionTicket
        if (rec.type === 22 && rec.plaintext[0] === 20 && opts.version === 'TLSv1.2') continue; // its Finished
        if (rec.type === 22 && rec.plaintext[0] === 24) {
          rekey('server');
          continue;
        }
        return rec;
      }
      if (ending) return undefined;
      if (Date.now() >= deadline) throw new Error(`no record from the server within ${timeoutMs} ms`);
      await waitFor(deadline - Date.now());
    }
  };

  const ended = async (ms: number): Promise<Ending | undefined> => {
    const deadline = Date.now() + ms;
    while (!ending && Date.now() < deadline) await waitFor(deadline - Date.now());
    return ending;
  };

  return {
    version: opts.version,
    localPort: sock.localPort!,
    socket: sock,
    isEnded: () => ending !== undefined,
    suite,
    seal: (type, plaintext, padding = 0) => tx.seal(type, plaintext, padding),
    send: (bytes) => void sock.write(bytes),
    pauseReading(ms) {
      sock.pause();
      if (ms !== undefined) setTimeout(() => sock.resume(), ms);
    },
    resumeReading: () => void sock.resume(),
    nextSendKey: () => rekey('client'),
    next,
    async readData(want, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      while (data.reduce((n, b) => n + b.length, 0) < want) {
        const r = await next(Math.max(1, deadline - Date.now()));
        if (!r) break;
        if (r.type === 23) data.push(r.plaintext);
        else throw new Error(`record of type ${r.type} (${r.plaintext.toString('hex')}) while waiting for data`);
      }
      return Buffer.concat(data.splice(0));
    },
    async alert(timeoutMs = 10_000) {
      for (;;) {
        let r: ServerRecord | undefined;
        try {
          r = await next(timeoutMs);
        } catch {
          return {};
        }
        if (!r) return { ending };
        if (r.type === 21) return { alert: [r.plaintext[0]!, r.plaintext[1]!], ending };
        if (r.type === 23) data.push(r.plaintext);
      }
    },
    ended,
    destroy() {
      tx.wipe();
      rx.wipe();
      tlsSocket.destroy();
      sock.destroy();
    },
  };
}
