// The fuzz run's inputs: a seeded PRNG and the generators of malformed (and a few legal) handshakes, each input a pure function of (seed, index).
import { tlsRecord } from '../../dist/testkit/hostile.js';

// ---------------------------------------------------------------- seeded PRNG (sfc32, seeded by splitmix32)

export function rngFor(seed, index) {
  let s = (seed ^ Math.imul(index + 1, 0x9e3779b9)) >>> 0;
  const mix = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = mix(),
    b = mix(),
    c = mix(),
    d = mix();
  const next = () => {
    const t = (((a + b) >>> 0) + d) >>> 0;
    d = (d + 1) >>> 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) >>> 0;
    c = ((c << 21) | (c >>> 11)) >>> 0;
    c = (c + t) >>> 0;
    return t >>> 0;
  };
  const r = {
    u32: next,
    /** Integer in [lo, hi]. */
    int: (lo, hi) => lo + (next() % (hi - lo + 1)),
    bool: (p = 0.5) => next() / 2 ** 32 < p,
    pick: (arr) => arr[next() % arr.length],
    bytes: (n) => {
      const b = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i++) b[i] = next() & 0xff;
      return b;
    },
  };
  return r;
}

// ---------------------------------------------------------------- ClientHello anatomy

/** Offsets of a ClientHello's length fields: [offset, width] (record, handshake, session id, suites, compression, extensions, each extension). */
function lengthFields(ch) {
  const f = [
    [3, 2],
    [6, 3],
  ];
  let o = 5 + 4 + 2 + 32;
  f.push([o, 1]);
  o += 1 + ch[o];
  f.push([o, 2]);
  o += 2 + ch.readUInt16BE(o);
  f.push([o, 1]);
  o += 1 + ch[o];
  f.push([o, 2]);
  o += 2;
  while (o + 4 <= ch.length) {
    f.push([o + 2, 2]);
    o += 4 + ch.readUInt16BE(o + 2);
  }
  return f;
}

// ---------------------------------------------------------------- input generators

const record = tlsRecord;

/** Real ClientHellos (TLS 1.3 and 1.2) the mutating generators start from: filled by the caller before drawing. */
export const HELLOS = [];

/** Each generator returns { bytes, fin } (raw inputs) or { real: 'segmented' | 'renegotiate' } (driven by node:tls). */
export const KINDS = {
  'random-bytes': (r) => ({ bytes: r.bytes(r.int(1, 2048)), fin: r.bool() }),
  'header+garbage': (r) => {
    const parts = [];
    for (let k = r.int(1, 3); k > 0; k--) parts.push(record(r.int(20, 24), r.bytes(r.int(0, 1200)), r.pick([0x0301, 0x0302, 0x0303, 0x0300 + r.int(0, 255)])));
    return { bytes: Buffer.concat(parts), fin: r.bool() };
  },
  truncated: (r) => {
    const claimed = r.int(1, 16640);
    const full = record(r.pick([22, 22, 22, 20, 21, 23, 24]), r.bytes(claimed), 0x0301);
    return { bytes: full.subarray(0, r.int(1, 5 + claimed - 1)), fin: true };
  },
  oversized: (r) => {
    const h = Buffer.from([r.pick([22, 23, 21]), 3, r.int(1, 3), 0, 0]);
    h.writeUInt16BE(r.int((1 << 14) + 257, 0xffff), 3);
    return { bytes: Buffer.concat([h, r.bytes(r.int(0, 4096))]), fin: r.bool() };
  },
  'hello-flip': (r) => {
    const ch = Buffer.from(r.pick(HELLOS));
    for (let k = r.int(1, 8); k > 0; k--) ch[r.int(0, ch.length - 1)] ^= 1 << r.int(0, 7);
    return { bytes: ch, fin: r.bool(0.3) };
  },
  'hello-truncated': (r) => {
    const ch = r.pick(HELLOS);
    return { bytes: ch.subarray(0, r.int(1, ch.length - 1)), fin: r.bool(0.8) };
  },
  'hello-length': (r) => {
    const ch = Buffer.from(r.pick(HELLOS));
    const fields = lengthFields(ch);
    for (let k = r.int(1, 2); k > 0; k--) {
      const [o, w] = r.pick(fields);
      const v = r.pick([0, 1, 0xff, r.u32(), ch.readUIntBE(o, w) + r.int(1, 16), ch.readUIntBE(o, w) - r.int(1, 16)]);
      ch.writeUIntBE(((v % 2 ** (8 * w)) + 2 ** (8 * w)) % 2 ** (8 * w), o, w);
    }
    return { bytes: ch, fin: r.bool(0.3) };
  },
  'hello+garbage': (r) => ({ bytes: Buffer.concat([r.pick(HELLOS), r.bytes(r.int(1, 600))]), fin: r.bool() }),
  'hello-1-byte-segments': () => ({ real: 'segmented' }),
  'sslv2-hello': (r) => {
    // SSLv2-compatible CLIENT-HELLO (RFC 5246 appendix E.2): 2-byte header with the top bit set, msg type 1.
    const specs = r.bytes(3 * r.int(1, 20));
    const challenge = r.bytes(r.pick([16, 32]));
    const body = Buffer.concat([Buffer.from([1, 3, r.int(0, 3)]), u16(specs.length), u16(0), u16(challenge.length), specs, challenge]);
    return { bytes: Buffer.concat([u16(0x8000 | body.length), body]), fin: r.bool() };
  },
  heartbeat: (r) => {
    // A heartbeat request claiming more payload than it carries (heartbleed-style), before or after a ClientHello.
    const payload = r.bytes(r.int(0, 64));
    const hb = record(24, Buffer.concat([Buffer.from([1]), u16(r.bool() ? r.int(payload.length + 1, 0xffff) : payload.length), payload, r.bytes(16)]));
    return { bytes: r.bool() ? Buffer.concat([r.pick(HELLOS), hb]) : hb, fin: r.bool() };
  },
  'alert-first': (r) => {
    const alert = record(21, Buffer.from([r.int(1, 2), r.pick([0, 10, 20, 40, 42, 70, 80, 90, r.int(0, 255)])]), 0x0301);
    return { bytes: r.bool() ? Buffer.concat([alert, r.pick(HELLOS)]) : alert, fin: r.bool() };
  },
  'ccs-first': (r) => {
    const ccs = record(20, Buffer.from([1]), 0x0303);
    return { bytes: r.bool() ? Buffer.concat([ccs, r.pick(HELLOS)]) : ccs, fin: r.bool() };
  },
  'tls12-renegotiation': () => ({ real: 'renegotiate' }),
};
// How often each kind is drawn (legal inputs run real handshakes: rarer, but thousands of them in 10 000).
const WEIGHTS = {
  'random-bytes': 10,
  'header+garbage': 10,
  truncated: 8,
  oversized: 6,
  'hello-flip': 14,
  'hello-truncated': 8,
  'hello-length': 10,
  'hello+garbage': 6,
  'hello-1-byte-segments': 2,
  'sslv2-hello': 4,
  heartbeat: 6,
  'alert-first': 4,
  'ccs-first': 4,
  'tls12-renegotiation': 2,
};
export const WHEEL = Object.entries(WEIGHTS).flatMap(([k, w]) => Array(w).fill(k));

function u16(v) {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
}
