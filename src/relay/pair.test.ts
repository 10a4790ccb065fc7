// A pair's relaying, run on plain sockets (no kTLS needed): order, backpressure, snapshots, and what one client's records may cost the loop.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { describe, it } from 'node:test';
import { EAGAIN, SHUT_WR, SOCK_NONBLOCK, SOCK_STREAM, SOL_SOCKET, sys } from '../kernel/libc.js';
import { EPOLLIN, EPOLLOUT } from '../kernel/poller.js';
import { ALERT, type ClientRead, type ClientSide } from './client-side.js';
import { PlainSplicingClient } from '../testkit/splicing-client.js';
import { NON_DATA_BURST, NON_DATA_PER_SECOND, NOTES_UNLIMITED, NonDataAllowance, TURN_BYTES, TURN_READS } from './budget.js';
import { Pair, type PairHost } from './pair.js';
import { PipePool } from './pipes.js';
import type { ConnectionInfo } from '../core/connection.js';

const SO_SNDBUF = 7;
const SO_RCVBUF = 8;

const info: ConnectionInfo = { id: 't', client: 'a', backend: 'b', version: 'TLSv1.3', cipher: 'x', mode: 'kernel', startedAt: 0 };

function rig(bufBytes?: number, clientBufBytes?: number) {
  const [clientApp, clientProxy] = sys.socketpair(SOCK_STREAM | SOCK_NONBLOCK);
  const [backendProxy, backendApp] = sys.socketpair(SOCK_STREAM | SOCK_NONBLOCK);
  if (bufBytes) for (const fd of [backendProxy, backendApp]) for (const opt of [SO_SNDBUF, SO_RCVBUF]) sys.setsockoptInt(fd, SOL_SOCKET, opt, bufBytes);
  if (clientBufBytes)
    for (const fd of [clientApp, clientProxy]) for (const opt of [SO_SNDBUF, SO_RCVBUF]) sys.setsockoptInt(fd, SOL_SOCKET, opt, clientBufBytes);
  const pipes = new PipePool();
  let taken = 0;
  const take = pipes.take.bind(pipes);
  pipes.take = () => (taken++, take());
  const closed: string[] = [];
  const host: PairHost = { interest: () => {}, closed: (_p, reason) => closed.push(reason), log: () => {}, pipes };
  const pair = new Pair(info, new PlainSplicingClient(clientProxy), backendProxy, host);
  pair.start();
  const scratch = Buffer.alloc(64 * 1024);
  const drain = (fd: number, into: Buffer[]) => {
    for (;;) {
      const b = Buffer.alloc(65536);
      const r = sys.recv(fd, b, b.length);
      if (r <= 0) return;
      into.push(b.subarray(0, r));
    }
  };
  const close = () => {
    for (const fd of [clientApp, clientProxy, backendProxy, backendApp]) sys.close(fd);
    pipes.close();
  };
  return { clientApp, backendApp, pair, scratch, drain, close, closed, pipesTaken: () => taken };
}

describe('a pair on the splice path', () => {
  it('moves 4 MiB each way byte-exact through pipes, and holds no pipe once idle', () => {
    const t = rig();
    try {
      const up = crypto.randomBytes(4 << 20);
      const down = crypto.randomBytes(4 << 20);
      const gotUp: Buffer[] = [];
      const gotDown: Buffer[] = [];
      let sentUp = 0;
      let sentDown = 0;
      for (let i = 0; i < 100_000 && (Buffer.concat(gotUp).length < up.length || Buffer.concat(gotDown).length < down.length); i++) {
        if (sentUp < up.length) sentUp += Math.max(0, sys.send(t.clientApp, up.subarray(sentUp), Math.min(65536, up.length - sentUp)));
        if (sentDown < down.length) sentDown += Math.max(0, sys.send(t.backendApp, down.subarray(sentDown), Math.min(65536, down.length - sentDown)));
        t.pair.onClient(EPOLLIN | EPOLLOUT, t.scratch);
        t.pair.onBackend(EPOLLIN | EPOLLOUT, t.scratch);
        t.drain(t.backendApp, gotUp);
        t.drain(t.clientApp, gotDown);
      }
      assert.ok(Buffer.concat(gotUp).equals(up), 'client → backend exact');
      assert.ok(Buffer.concat(gotDown).equals(down), 'backend → client exact');
      assert.equal(t.pair.bytesIn, up.length);
      assert.equal(t.pair.bytesOut, down.length);
      assert.ok(t.pipesTaken() > 0, 'the splice path was used');
      const snap = t.pair.snapshot();
      assert.equal(snap.c2b, undefined);
      assert.equal(snap.b2c, undefined);
      assert.deepEqual(t.closed, []);
    } finally {
      t.close();
    }
  });

  it('parks bytes in a pipe while the backend is full, and a snapshot carries exactly them, in order', () => {
    const t = rig(4096);
    try {
      const up = crypto.randomBytes(1 << 20);
      let sent = 0;
      for (let i = 0; i < 1000; i++) {
        const w = sys.send(t.clientApp, up.subarray(sent), up.length - sent);
        if (w > 0) sent += w;
        t.pair.onClient(EPOLLIN, t.scratch);
      }
      // Nobody reads the backend: the pair has a load parked and stopped reading the client.
      const atBackend: Buffer[] = [];
      const snap = t.pair.snapshot();
      assert.ok(snap.c2b && snap.c2b.length > 0, 'bytes were parked');
      t.drain(t.backendApp, atBackend);
      const stillQueued: Buffer[] = [];
      t.drain(t.pair.client.fd, stillQueued);
      const reassembled = Buffer.concat([...atBackend, Buffer.from(snap.c2b), ...stillQueued]);
      assert.equal(reassembled.length, sent);
      assert.ok(reassembled.equals(up.subarray(0, sent)), 'delivered + parked + unread is the stream, in order');
    } finally {
      t.close();
    }
  });
});

/** Fills `fd` with up to `want` bytes; fails the test if the socket cannot hold them (the bound would go unseen). */
function fill(fd: number, want: number): number {
  const chunk = Buffer.alloc(65536, 7);
  let sent = 0;
  while (sent < want) {
    const w = sys.send(fd, chunk, Math.min(chunk.length, want - sent));
    if (w <= 0) break;
    sent += w;
  }
  assert.equal(sent, want, `the socket holds only ${sent} bytes: too few to show the per-event bound`);
  return sent;
}

describe('one busy connection cannot hold its relay loop', () => {
  it(`moves at most ${TURN_BYTES / 1024} KiB per readiness event on the splice path, each way, and the rest on later events`, () => {
    const t = rig(8 << 20, 8 << 20);
    try {
      const queued = 4 * TURN_BYTES;
      fill(t.clientApp, queued);
      fill(t.backendApp, queued);
      t.pair.onClient(EPOLLIN, t.scratch);
      t.pair.onBackend(EPOLLIN, t.scratch);
      // Whole pipe-sized chunks: the turn ends at the first chunk that reaches the bound.
      for (const [dir, n] of [
        ['up', t.pair.bytesIn],
        ['down', t.pair.bytesOut],
      ] as const) {
        assert.ok(n >= TURN_BYTES && n < TURN_BYTES + 65536, `${dir}: one event moved ${n} bytes`);
      }
      for (let i = 0; i < 20 && (t.pair.bytesIn < queued || t.pair.bytesOut < queued); i++) {
        t.pair.onClient(EPOLLIN | EPOLLOUT, t.scratch);
        t.pair.onBackend(EPOLLIN | EPOLLOUT, t.scratch);
      }
      assert.equal(t.pair.bytesIn, queued, 'later events move the rest up');
      assert.equal(t.pair.bytesOut, queued, 'later events move the rest down');
      assert.deepEqual(t.closed, []);
    } finally {
      t.close();
    }
  });

  it('a client with an endless supply yields after the bound, unless it holds plaintext no event would announce', () => {
    const [backendProxy, backendApp] = sys.socketpair(SOCK_STREAM | SOCK_NONBLOCK);
    for (const fd of [backendProxy, backendApp]) for (const opt of [SO_SNDBUF, SO_RCVBUF]) sys.setsockoptInt(fd, SOL_SOCKET, opt, 8 << 20);
    const RECORD = 16 * 1024;
    /** A userspace-record client that always has another record decrypted; `buffered` says what it holds. */
    const source = { reads: 0, bufferedUntil: 0 };
    const endless: ClientSide = {
      fd: -1,
      splices: false,
      pendingOutput: false,
      inputPaused: false,
      get bufferedInput() {
        return source.reads < source.bufferedUntil;
      },
      read(buf: Buffer): ClientRead {
        source.reads++;
        buf.fill(1, 0, RECORD);
        return { kind: 'data', n: RECORD };
      },
      write: (_b: Buffer, len: number) => len,
      closeNotify: () => true,
      carriesOutput: true,
      sendAlert: () => {},
      flush: () => 0,
      wipe: () => {},
    };
    const host: PairHost = { interest: () => {}, closed: (_p, reason) => assert.fail(`closed: ${reason}`), log: () => {} };
    const pair = new Pair({ ...info, mode: 'user' }, endless, backendProxy, host);
    const scratch = Buffer.alloc(64 * 1024);
    try {
      pair.start();
      pair.onClient(EPOLLIN, scratch);
      assert.equal(pair.bytesIn, TURN_BYTES, 'one event, one turn');
      pair.onClient(EPOLLIN, scratch);
      assert.equal(pair.bytesIn, 2 * TURN_BYTES, 'the next event, the next turn');
      // Plaintext held in the process must be handed out now: epoll will not report it.
      source.bufferedUntil = source.reads + TURN_BYTES / RECORD + 4;
      pair.onClient(EPOLLIN, scratch);
      assert.equal(pair.bytesIn, 3 * TURN_BYTES + 4 * RECORD);
    } finally {
      for (const fd of [backendProxy, backendApp]) sys.close(fd);
    }
  });
});

describe('records without data cost their sender, not the loop', () => {
  /** A client side that always has another record without data (an endless KeyUpdate or empty-record flood). */
  function flooding() {
    const seen = { reads: 0, alerts: [] as number[] };
    const client: ClientSide = {
      fd: -1,
      splices: false,
      pendingOutput: false,
      inputPaused: false,
      bufferedInput: false,
      read(): ClientRead {
        seen.reads++;
        return { kind: 'skip', note: 'client KeyUpdate' };
      },
      write: (_b: Buffer, len: number) => len,
      closeNotify: () => true,
      carriesOutput: true,
      sendAlert: (d: number) => void seen.alerts.push(d),
      flush: () => 0,
      wipe: () => {},
    };
    return { client, seen };
  }

  it(`one readiness event reads at most ${TURN_READS} of them, and past ${NON_DATA_BURST} in a burst the connection ends with unexpected_message`, () => {
    const [backendProxy, backendApp] = sys.socketpair(SOCK_STREAM | SOCK_NONBLOCK);
    const { client, seen } = flooding();
    const closed: string[] = [];
    const logged: string[] = [];
    const host: PairHost = { interest: () => {}, closed: (_p, reason, _l, cause) => closed.push(`${cause}: ${reason}`), log: (_l, _id, m) => logged.push(m) };
    const pair = new Pair({ ...info, mode: 'user' }, client, backendProxy, host);
    const scratch = Buffer.alloc(64 * 1024);
    try {
      pair.start();
      pair.onClient(EPOLLIN, scratch);
      assert.equal(seen.reads, TURN_READS, 'one event, one turn of reads');
      assert.deepEqual(closed, []);
      for (let i = 0; i < 10 && closed.length === 0; i++) pair.onClient(EPOLLIN, scratch);
      assert.equal(closed.length, 1, 'the flood ended the connection');
      assert.match(closed[0]!, /^protocol_error: client sent records without data faster than allowed/);
      assert.ok(seen.reads <= NON_DATA_BURST + 2, `${seen.reads} records read before the end`);
      assert.deepEqual(seen.alerts, [ALERT.unexpected_message]);
      // Their log lines are rate-limited: a few, then one line for the rest at the close.
      assert.ok(logged.length <= NOTES_UNLIMITED + 1, `${logged.length} log lines: ${logged.join(' | ')}`);
      assert.match(logged.at(-1)!, /more record\(s\) without data went unlogged/);
    } finally {
      for (const fd of [backendProxy, backendApp]) sys.close(fd);
    }
  });

  it('the allowance refills with time: a steady trickle below the rate is never cut off', () => {
    const a = new NonDataAllowance(0);
    for (let i = 0; i < NON_DATA_BURST; i++) assert.ok(a.take(0));
    assert.equal(a.take(0), false, 'the burst is spent');
    // One per 1/rate seconds, for a minute: always allowed.
    for (let t = 1; t <= 60 * NON_DATA_PER_SECOND; t++) assert.ok(a.take((t * 1000) / NON_DATA_PER_SECOND), `record ${t}`);
  });
});

describe('a close_notify the client socket has not taken yet', () => {
  /** A kernel-mode-like client side whose close_notify waits in the object (not carried) until `owed` is cleared. */
  class OwingClient implements ClientSide {
    readonly splices = true;
    readonly carriesOutput = false;
    readonly bufferedInput = false;
    owed = false;
    private readonly plain: PlainSplicingClient;
    constructor(readonly fd: number) {
      this.plain = new PlainSplicingClient(fd);
    }
    get pendingOutput(): boolean {
      return this.owed;
    }
    get inputPaused(): boolean {
      return this.owed;
    }
    read(buf: Buffer): ClientRead {
      return this.plain.read(buf);
    }
    spliceIn(pipeW: number, len: number): number | 'control' | ClientRead {
      return this.plain.spliceIn(pipeW, len);
    }
    write(buf: Buffer, len: number): number {
      return this.plain.write(buf, len);
    }
    closeNotify(): boolean {
      this.owed = true;
      return false;
    }
    sendAlert(): void {}
    flush(): number {
      return this.owed ? -EAGAIN : 0;
    }
    wipe(): void {}
  }

  it('is not reported as sent (a carry sends it again), and the FIN to the client waits for it', () => {
    const [clientApp, clientProxy] = sys.socketpair(SOCK_STREAM | SOCK_NONBLOCK);
    const [backendProxy, backendApp] = sys.socketpair(SOCK_STREAM | SOCK_NONBLOCK);
    const client = new OwingClient(clientProxy);
    const closed: string[] = [];
    const host: PairHost = { interest: () => {}, closed: (_p, reason) => closed.push(reason), log: () => {} };
    const pair = new Pair(info, client, backendProxy, host);
    const scratch = Buffer.alloc(64 * 1024);
    const probe = Buffer.alloc(16);
    try {
      pair.start();
      sys.shutdown(backendApp, SHUT_WR);
      pair.onBackend(EPOLLIN, scratch);
      assert.equal(client.owed, true, 'the backend FIN asked for a close_notify');
      assert.deepEqual(pair.snapshot().flags, { clientEof: false, backendShut: false, backendEof: true, clientShut: false, closeNotifySent: false });
      assert.equal(sys.recv(clientApp, probe, probe.length), -EAGAIN, 'no FIN before the close_notify has gone');
      client.owed = false;
      pair.onClient(EPOLLOUT, scratch);
      assert.equal(sys.recv(clientApp, probe, probe.length), 0, 'the FIN follows the close_notify');
      assert.equal(pair.flags.clientShut, true);
      assert.deepEqual(closed, []);
    } finally {
      for (const fd of [clientApp, clientProxy, backendProxy, backendApp]) sys.close(fd);
    }
  });
});
