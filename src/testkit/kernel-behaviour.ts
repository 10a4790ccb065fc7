// Test support: measures, on loopback sockets, each kTLS behaviour the relay depends on, so every lane kernel is checked (and described) the same way.
import { execFileSync } from 'node:child_process';
import { E, EAGAIN, IPPROTO_TCP, SHUT_WR, sys } from '../kernel/libc.js';
import {
  RECORD_ALERT,
  RECORD_APPLICATION_DATA,
  RECORD_HANDSHAKE,
  TCP_ULP,
  TLS_1_3_VERSION,
  TLS_CIPHER_AES_GCM_128,
  TlsRecordIo,
  enableTlsUlp,
  installDirection,
} from '../kernel/ktls.js';
import { loopbackPair, probeKernel } from '../kernel/probe.js';
import { RecordProtection } from '../record/aead.js';
import { suiteByName } from '../record/suites.js';

/** What a read from a kTLS RX socket gave: bytes and the record type its cmsg named, or an errno name. */
export type ReadOutcome = { bytes: number; type: number | undefined } | { error: string };

export interface KernelBehaviour {
  release: string;
  accepted: ReturnType<typeof probeKernel>['accepted'];
  /** The start-up probe's answer: an installed TLS 1.3 TX key can be replaced (KeyUpdate). */
  rekey: boolean;
  /** What a live session does: records sent after a second TLS_TX setsockopt open under the new key. */
  rekeysLive: boolean;
  /** getsockopt(TCP_ULP) once kTLS is on. */
  ulp: string;
  /** splice() of data then an alert: the data, then this at the alert. */
  spliceAtControl: ReadOutcome[];
  /** recvmsg() of that alert. */
  controlByRecvmsg: ReadOutcome;
  /** recvmsg() of an empty application-data record followed by one byte. */
  emptyData: ReadOutcome[];
  /** recvmsg() of an empty alert record. */
  emptyAlert: ReadOutcome;
  /** recvmsg() of a record whose tag does not verify. */
  badMac: ReadOutcome;
  /** recvmsg() of a record longer than 2^14 + 256. */
  overlong: ReadOutcome;
  /** recvmsg() of a KeyUpdate, then of the record after it. */
  keyUpdate: ReadOutcome[];
  /** recvmsg() once the peer has sent FIN. */
  eof: ReadOutcome;
  /** An alert sent with TLS_SET_RECORD_TYPE reaches the peer as one alert record. */
  sendsControl: boolean;
  /** splice() from a pipe into the kTLS socket reaches the peer as application data. */
  splicesOut: boolean;
}

const suite = suiteByName('TLS_AES_128_GCM_SHA256', 'TLSv1.3')!;
const KEY = Buffer.alloc(16, 7);
const IV = Buffer.alloc(12, 9);
const errName = (n: number) => Object.entries(E).find(([, v]) => v === n)?.[0] ?? `errno ${n}`;
const pause = new Int32Array(new SharedArrayBuffer(4));
const sleep = (ms: number) => Atomics.wait(pause, 0, 0, ms);

/** Retries a non-blocking call while it says EAGAIN (loopback bytes take a moment), for up to 2 s. */
function whenReady(f: () => number): number {
  for (let i = 0; i < 400; i++) {
    const r = f();
    if (r !== -EAGAIN) return r;
    sleep(5);
  }
  return -EAGAIN;
}

/** A loopback pair whose server side has kTLS TLS 1.3 AES-128-GCM (RX with the client's keys, TX with its own), the client side plain TCP. */
function session<T>(body: (s: { server: number; client: number; io: TlsRecordIo; seal: RecordProtection; open: RecordProtection }) => T): T {
  const p = loopbackPair();
  const seal = new RecordProtection(suite, KEY, IV);
  const open = new RecordProtection(suite, KEY, IV);
  try {
    enableTlsUlp(p.server);
    const dir = { version: TLS_1_3_VERSION, cipher: TLS_CIPHER_AES_GCM_128, key: KEY, iv: IV, seq: 0n } as const;
    installDirection(p.server, 'tx', dir);
    installDirection(p.server, 'rx', dir);
    return body({ server: p.server, client: p.client, io: new TlsRecordIo(), seal, open });
  } finally {
    seal.wipe();
    open.wipe();
    sys.close(p.client);
    sys.close(p.server);
    sys.close(p.listener);
  }
}

function send(fd: number, bytes: Buffer): void {
  if (sys.send(fd, bytes, bytes.length) !== bytes.length) throw new Error('short send on loopback');
}

function recvOnce(io: TlsRecordIo, fd: number): ReadOutcome {
  const buf = Buffer.alloc(1 << 15);
  const cmsg = { type: undefined as number | undefined };
  const r = whenReady(() => {
    const n = io.recv(fd, buf, buf.length);
    cmsg.type = io.recordTypeDelivered ? io.recordType : undefined;
    return n;
  });
  return r < 0 ? { error: errName(-r) } : { bytes: r, type: cmsg.type };
}

function spliceOnce(fd: number, pipeW: number): ReadOutcome {
  const r = whenReady(() => sys.splice(fd, pipeW, 1 << 16));
  return r < 0 ? { error: errName(-r) } : { bytes: r, type: undefined };
}

function ulpOf(fd: number): string {
  const b = Buffer.alloc(16);
  const n = sys.getsockoptBuf(fd, IPPROTO_TCP, TCP_ULP, b);
  return n < 0 ? errName(-n) : b.subarray(0, n).toString('latin1').replace(/\0.*$/s, '');
}

/** Reads one whole record off the plain client socket and opens it. */
function readRecord(fd: number, open: RecordProtection): { type: number; plaintext: Buffer } {
  const buf = Buffer.alloc(1 << 15);
  let have = 0;
  for (;;) {
    if (have >= 5 && have >= 5 + buf.readUInt16BE(3)) break;
    const r = whenReady(() => sys.recv(fd, buf.subarray(have), buf.length - have, 0x40));
    if (r <= 0) throw new Error(`reading the kernel's record: ${r === 0 ? 'EOF' : errName(-r)}`);
    have += r;
  }
  const len = buf.readUInt16BE(3);
  const opened = open.open(buf.subarray(0, 5), buf.subarray(5, 5 + len));
  return { type: opened.type, plaintext: Buffer.from(opened.plaintext) };
}

/** Runs every check on this kernel. Throws only when kTLS itself cannot be installed. */
export function measureKernelBehaviour(): KernelBehaviour {
  const probe = probeKernel();
  const alert = (desc: number) => Buffer.from([2, desc]);
  return {
    release: execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim(),
    accepted: probe.accepted,
    rekey: probe.rekey,
    ulp: session(({ server }) => ulpOf(server)),
    rekeysLive: session(({ server, client, open }) => {
      const io = new TlsRecordIo();
      if (io.sendRecord(server, RECORD_APPLICATION_DATA, Buffer.from('old key')) !== 7) return false;
      if (readRecord(client, open).plaintext.toString() !== 'old key') return false;
      const key2 = Buffer.alloc(16, 8);
      const iv2 = Buffer.alloc(12, 10);
      try {
        installDirection(server, 'tx', { version: TLS_1_3_VERSION, cipher: TLS_CIPHER_AES_GCM_128, key: key2, iv: iv2, seq: 0n });
      } catch {
        return false;
      }
      if (io.sendRecord(server, RECORD_APPLICATION_DATA, Buffer.from('new key')) !== 7) return false;
      const next = new RecordProtection(suite, key2, iv2);
      try {
        return readRecord(client, next).plaintext.toString() === 'new key';
      } finally {
        next.wipe();
      }
    }),
    ...session(({ server, client, io, seal }) => {
      send(client, Buffer.concat([seal.seal(RECORD_APPLICATION_DATA, Buffer.from('abc')), seal.seal(RECORD_ALERT, alert(10))]));
      const [r, w] = sys.pipe();
      try {
        const spliceAtControl = [spliceOnce(server, w), spliceOnce(server, w)];
        return { spliceAtControl, controlByRecvmsg: recvOnce(io, server) };
      } finally {
        sys.close(r);
        sys.close(w);
      }
    }),
    emptyData: session(({ server, client, io, seal }) => {
      send(client, Buffer.concat([seal.seal(RECORD_APPLICATION_DATA, Buffer.alloc(0)), seal.seal(RECORD_APPLICATION_DATA, Buffer.from('x'))]));
      return [recvOnce(io, server), recvOnce(io, server)];
    }),
    emptyAlert: session(({ server, client, io, seal }) => {
      send(client, seal.seal(RECORD_ALERT, Buffer.alloc(0)));
      return recvOnce(io, server);
    }),
    badMac: session(({ server, client, io, seal }) => {
      const rec = seal.seal(RECORD_APPLICATION_DATA, Buffer.from('tampered'));
      rec[rec.length - 1]! ^= 1;
      send(client, rec);
      return recvOnce(io, server);
    }),
    overlong: session(({ server, client, io }) => {
      const body = Buffer.alloc((1 << 14) + 257, 0x55);
      const header = Buffer.from([RECORD_APPLICATION_DATA, 3, 3, 0, 0]);
      header.writeUInt16BE(body.length, 3);
      send(client, Buffer.concat([header, body]));
      return recvOnce(io, server);
    }),
    keyUpdate: session(({ server, client, io, seal }) => {
      // KeyUpdate(update_not_requested), then a record under the (unchanged) old key.
      send(client, Buffer.concat([seal.seal(RECORD_HANDSHAKE, Buffer.from([24, 0, 0, 1, 0])), seal.seal(RECORD_APPLICATION_DATA, Buffer.from('after'))]));
      return [recvOnce(io, server), recvOnce(io, server)];
    }),
    eof: session(({ server, client, io }) => {
      sys.shutdown(client, SHUT_WR);
      return recvOnce(io, server);
    }),
    sendsControl: session(({ server, client, io, open }) => {
      if (io.sendRecord(server, RECORD_ALERT, alert(0)) !== 2) return false;
      const rec = readRecord(client, open);
      return rec.type === RECORD_ALERT && rec.plaintext.equals(alert(0));
    }),
    splicesOut: session(({ server, client, open }) => {
      const [r, w] = sys.pipe();
      try {
        const payload = Buffer.from('spliced out');
        if (sys.write(w, payload, payload.length) !== payload.length) return false;
        if (whenReady(() => sys.splice(r, server, payload.length)) !== payload.length) return false;
        const rec = readRecord(client, open);
        return rec.type === RECORD_APPLICATION_DATA && rec.plaintext.equals(payload);
      } finally {
        sys.close(r);
        sys.close(w);
      }
    }),
  };
}

/** One outcome as the README's table writes it: "3 B (type 23)", "EINVAL", "0 B (no type)". */
export function describeOutcome(o: ReadOutcome): string {
  if ('error' in o) return o.error;
  return `${o.bytes} B (${o.type === undefined ? 'no type' : `type ${o.type}`})`;
}
