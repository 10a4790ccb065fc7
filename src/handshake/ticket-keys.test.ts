// Checks the keyring on real handshakes (libssl server, node:tls clients): which key encrypts, which decrypt, fresh tickets on resumption (TLS 1.3 and 1.2), SNI contexts, session ID contexts.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import tls from 'node:tls';
import { makeCert, tempDir } from '../testkit/proxy-process.js';
import { TICKET_KEY_BYTES, TicketKeyring, encryptIndex, type TicketKeySet } from './ticket-keys.js';
import { LibsslServer } from './libssl.js';
import { listenLibssl } from '../testkit/libssl-listen.js';

const VERSIONS = ['TLSv1.3', 'TLSv1.2'] as const;

/** A server for `pair` issuing and accepting tickets under `ring`, TLS 1.2 and 1.3, in session ID context `sid`. */
const serve = (pair: { cert: Buffer; key: Buffer }, ring: TicketKeyring, sid: string) =>
  new LibsslServer({ pairs: [{ certificateChain: pair.cert, key: pair.key }], minVersion: 'TLSv1.2', tickets: ring, sessionIdContext: sid });

function keySet(keys: Buffer[], lifetimeS = 3600): TicketKeySet {
  const packed = new Uint8Array(new ArrayBuffer(keys.length * TICKET_KEY_BYTES));
  keys.forEach((k, i) => packed.set(k, i * TICKET_KEY_BYTES));
  return { keys: packed, encrypt: encryptIndex(keys.length), lifetimeS };
}

interface Outcome {
  resumed: boolean;
  /** Sessions the client can resume with, newest last: from 'session' events (TLS 1.3), else the one it ended with. */
  sessions: Buffer[];
  /** The ticket the server sent last (its first 16 bytes name the key that encrypted it). */
  ticket?: Buffer;
}

/** A TLS server as the proxy runs its handshakes (libssl, record by record), picking a server per SNI; the connection ends after the handshake. */
async function server(pick: (servername: string | undefined) => LibsslServer) {
  const l = await listenLibssl(() => pick(undefined).accept({ sni: (name) => pick(name) }), opened, { endWhenDone: true, freeWhenDone: true });
  const connect = (version: (typeof VERSIONS)[number], session?: Buffer, servername = 'localhost') =>
    new Promise<Outcome>((resolve, reject) => {
      const s = tls.connect({ port: l.port, host: '127.0.0.1', servername, rejectUnauthorized: false, minVersion: version, maxVersion: version, session });
      const sessions: Buffer[] = [];
      let resumed = false;
      s.on('session', (x: Buffer) => sessions.push(x));
      s.once('secureConnect', () => (resumed = s.isSessionReused()));
      s.on('data', () => {});
      s.once('end', () => {
        // TLS 1.2: a ticket renewed during a resumption comes with no 'session' event; the session it ends with has it.
        const ticket = s.getTLSTicket();
        const last = s.getSession();
        if (version === 'TLSv1.2' && last && !sessions.some((x) => x.equals(last))) sessions.push(last);
        s.destroy();
        resolve({ resumed, sessions, ticket });
      });
      s.on('error', reject);
    });
  return { connect, close: async () => l.close() };
}

/** Closers of what the current test opened. */
const opened: Array<() => void> = [];
afterEach(() => opened.splice(0).forEach((close) => close()));

/**
 * The ticket lifetime hint of a session as node:tls hands it out (OpenSSL's SSL_SESSION DER: a SEQUENCE whose
 * [9] EXPLICIT INTEGER is the hint). Read here rather than with `openssl sess_id`, which cannot read node 24's
 * wrapped form.
 */
function lifetimeHint(session: Buffer): number | undefined {
  // Node 24 wraps the DER: "\0nodejs:tls:session:1\0", a 16-bit length and the server name, then the DER.
  const wrapper = Buffer.from('\0nodejs:tls:session:');
  let der = session;
  if (session.subarray(0, wrapper.length).equals(wrapper)) {
    const nameLength = session.indexOf(0, wrapper.length) + 1;
    der = session.subarray(nameLength + 2 + session.readUInt16BE(nameLength));
  }
  const header = (at: number): { tag: number; start: number; end: number } => {
    const tag = der[at]!;
    let len = der[at + 1]!;
    let start = at + 2;
    if (len & 0x80) {
      const n = len & 0x7f;
      len = 0;
      for (let i = 0; i < n; i++) len = len * 256 + der[start + i]!;
      start += n;
    }
    return { tag, start, end: start + len };
  };
  const top = header(0);
  assert.equal(top.tag, 0x30, 'an SSL_SESSION is a SEQUENCE');
  for (let at = top.start; at < top.end;) {
    const field = header(at);
    if (field.tag === 0xa9) {
      const int = header(field.start);
      assert.equal(int.tag, 0x02, 'the hint is an INTEGER');
      return der.subarray(int.start, int.end).reduce((n, b) => n * 256 + b, 0);
    }
    at = field.end;
  }
  return undefined;
}

describe('session ticket keyring', () => {
  let dir: string;
  let ec: { cert: Buffer; key: Buffer };
  let rsa: { cert: Buffer; key: Buffer };
  before(async () => {
    dir = tempDir('ticket-keyring');
    const [a, b] = await Promise.all([makeCert(dir, 'ec'), makeCert(dir, 'rsa')]);
    ec = { cert: fs.readFileSync(a.certFile), key: fs.readFileSync(a.keyFile) };
    rsa = { cert: fs.readFileSync(b.certFile), key: fs.readFileSync(b.keyFile) };
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('encrypts every ticket with the penultimate key and accepts a ticket under any key of the set (TLS 1.3 and 1.2)', async () => {
    const keys = [0, 1, 2].map(() => crypto.randomBytes(48));
    const ring = new TicketKeyring(keySet(keys));
    const ctx = serve(ec, ring, 'test');
    const s = await server(() => ctx);
    try {
      for (const v of VERSIONS) {
        const first = await s.connect(v);
        assert.equal(first.resumed, false);
        assert.ok(first.ticket, `${v}: a ticket`);
        assert.deepEqual(first.ticket.subarray(0, 16), keys[1]!.subarray(0, 16), `${v}: named after the penultimate key`);
        // The same session under another set where the key is the oldest of three: still accepted.
        ring.replace(keySet([keys[1]!, keys[2]!, crypto.randomBytes(48)]));
        assert.equal((await s.connect(v, first.sessions[0])).resumed, true, `${v}: resumed under the oldest key of the set`);
        ring.replace(keySet(keys));
      }
    } finally {
      await s.close();
    }
  });

  it('issues a fresh ticket on every resumption, which resumes in turn: TLS 1.3 a NewSessionTicket after the handshake, TLS 1.2 one in the abbreviated flight', async () => {
    const ring = new TicketKeyring(keySet([crypto.randomBytes(48), crypto.randomBytes(48)]));
    const ctx = serve(ec, ring, 'test');
    const s = await server(() => ctx);
    try {
      for (const v of VERSIONS) {
        const first = await s.connect(v);
        const again = await s.connect(v, first.sessions[0]);
        assert.equal(again.resumed, true, v);
        assert.ok(again.ticket && !again.ticket.equals(first.ticket!), `${v}: the resumed handshake brought a new ticket`);
        if (v === 'TLSv1.3') assert.equal(again.sessions.length, 1, 'TLS 1.3: one NewSessionTicket after the resumed handshake');
        const third = await s.connect(v, again.sessions.at(-1));
        assert.equal(third.resumed, true, `${v}: the renewed ticket resumes`);
      }
    } finally {
      await s.close();
    }
  });

  it('does not accept a ticket whose key has left the set: a full handshake, and onUnknown hears it', async () => {
    let unknown = 0;
    const keys = [0, 1, 2, 3, 4].map(() => crypto.randomBytes(48));
    const ring = new TicketKeyring(keySet(keys.slice(0, 2)), () => unknown++);
    const ctx = serve(ec, ring, 'test');
    const s = await server(() => ctx);
    try {
      for (const v of VERSIONS) {
        ring.replace(keySet(keys.slice(0, 2)));
        const t = await s.connect(v); // under keys[0], the penultimate of two
        ring.replace(keySet(keys.slice(0, 3))); // one rotation: keys[0] is the previous key
        assert.equal((await s.connect(v, t.sessions[0])).resumed, true, `${v}: one rotation later`);
        ring.replace(keySet(keys.slice(1, 4))); // two: dropped
        const before = unknown;
        assert.equal((await s.connect(v, t.sessions[0])).resumed, false, `${v}: two rotations later`);
        assert.equal(unknown, before + 1);
      }
    } finally {
      await s.close();
    }
  });

  it('resumes a ticket from an SNI context on contexts built anew from the same keys (another worker, or after a reload)', async () => {
    const keys = [crypto.randomBytes(48), crypto.randomBytes(48)];
    const contexts = (ring: TicketKeyring) => {
      const byName = { localhost: serve(ec, ring, 'test'), other: serve(rsa, ring, 'test') };
      return (n: string | undefined) => (n === 'other' ? byName.other : byName.localhost);
    };
    const [a, b] = await Promise.all([server(contexts(new TicketKeyring(keySet(keys)))), server(contexts(new TicketKeyring(keySet(keys))))]);
    try {
      for (const v of VERSIONS) {
        for (const name of ['other', 'localhost']) {
          const t = await a.connect(v, undefined, name);
          assert.equal((await b.connect(v, t.sessions[0], name)).resumed, true, `${v}, SNI ${name}: resumed on the other contexts`);
        }
      }
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('resumes a session only where its session ID context matches, with the same keys', async () => {
    const ring = new TicketKeyring(keySet([crypto.randomBytes(48), crypto.randomBytes(48)]));
    const a = serve(ec, ring, 'listener-a');
    const b = serve(ec, ring, 'listener-b');
    const [sa, sb] = await Promise.all([server(() => a), server(() => b)]);
    try {
      for (const v of VERSIONS) {
        const t = await sa.connect(v);
        assert.equal((await sb.connect(v, t.sessions[0])).resumed, false, `${v}: not in another context`);
        assert.equal((await sa.connect(v, t.sessions[0])).resumed, true, `${v}: in its own`);
      }
    } finally {
      await Promise.all([sa.close(), sb.close()]);
    }
  });

  it('sets the lifetime hint from the set, and zeroes the set it replaces', async () => {
    const first = keySet([crypto.randomBytes(48), crypto.randomBytes(48)], 90);
    const ring = new TicketKeyring(first);
    const ctx = serve(ec, ring, 'test');
    const s = await server(() => ctx);
    try {
      for (const v of VERSIONS) {
        assert.equal(lifetimeHint((await s.connect(v)).sessions[0]!), 90, v);
      }
      ring.replace(keySet([crypto.randomBytes(48), crypto.randomBytes(48)]));
      assert.ok(
        first.keys.every((b) => b === 0),
        'the old keys are zeroed',
      );
    } finally {
      await s.close();
    }
  });
});
