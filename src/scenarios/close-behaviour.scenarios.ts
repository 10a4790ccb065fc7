// How relayed connections end (half-closes, RST, truncation, KeyUpdate, refused backend, garbage) and that each leaves no fd behind; per mode.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { KeylogCollector } from '../handshake/keylog.js';
import { RecordProtection, type OpenedRecord } from '../record/aead.js';
import { tls13TrafficKeys } from '../record/keys.js';
import { suiteByName } from '../record/suites.js';
import { scriptedBackend, streamChunk } from '../testkit/backends.js';
import { countedAs } from '../testkit/close-causes.js';
import { modeArgs, type Mode } from './real-clients.scenarios.js';
import { eventually, makeCert, startProxyProcess, tempDir, type RunningProxy } from '../testkit/proxy-process.js';
import { assertLaneKernel } from '../testkit/lane.js';

const dir = tempDir('close');
const T = { timeout: 180_000 }; // per test: the guest is slow, but nothing here may hang
let cert: { certFile: string; keyFile: string };

let mode: Mode = 'kernel'; // which mode the connections under test must be in (set by closeBehaviourScenarios)

/** Resolves with everything `s` delivers until 'end'; rejects on 'error'. */
function collect(s: net.Socket): Promise<Buffer> {
  const got: Buffer[] = [];
  s.on('data', (d: Buffer) => got.push(d));
  return new Promise((resolve, reject) => {
    s.once('end', () => resolve(Buffer.concat(got)));
    s.once('error', reject);
  });
}

/** A TLS 1.3 node client that keeps reading after it ends its side; `tcp` is the socket underneath. */
async function connectTls(port: number) {
  // The TLS socket takes allowHalfOpen from the socket it wraps: without it, the FIN after close_notify ends our side too.
  const tcp = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  await once(tcp, 'connect');
  const keylog = new KeylogCollector();
  const opts = { socket: tcp, allowHalfOpen: true, rejectUnauthorized: false, minVersion: 'TLSv1.3' as const };
  const c = tls.connect(opts as tls.ConnectionOptions);
  c.on('keylog', (line: Buffer) => keylog.add(line));
  await once(c, 'secureConnect');
  return { c, tcp, keylog, cipher: c.getCipher().name };
}
type Client = Awaited<ReturnType<typeof connectTls>>;

/** A TCP hop in front of the proxy that records what the proxy sends, and whether it sent FIN. */
async function wireTap(target: number) {
  const tap = { port: 0, fromProxy: [] as Buffer[], proxyFin: false, server: net.createServer({ allowHalfOpen: true }) };
  tap.server.on('connection', (a) => {
    const b = net.connect({ port: target, host: '127.0.0.1', allowHalfOpen: true });
    a.on('error', () => b.destroy());
    b.on('error', () => a.destroy());
    b.on('data', (d: Buffer) => tap.fromProxy.push(d));
    b.on('end', () => (tap.proxyFin = true));
    a.pipe(b);
    b.pipe(a);
  });
  tap.server.listen(0, '127.0.0.1');
  await once(tap.server, 'listening');
  tap.port = (tap.server.address() as net.AddressInfo).port;
  return tap;
}

/** Decrypts what the proxy sent under the TLS 1.3 server application key; asserts it ends with close_notify; returns the data. */
function dataThenCloseNotify(wire: Buffer, client: Client): Buffer {
  const suite = suiteByName(client.cipher, 'TLSv1.3');
  const secret = client.keylog.serverTrafficSecret0;
  assert.ok(suite && secret, 'TLS 1.3 suite and server traffic secret known');
  const raw: Array<[Buffer, Buffer]> = [];
  let o = 0;
  while (o + 5 <= wire.length) {
    const n = wire.readUInt16BE(o + 3);
    raw.push([wire.subarray(o, o + 5), wire.subarray(o + 5, o + 5 + n)]);
    o += 5 + n;
  }
  assert.equal(o, wire.length, 'the proxy stopped on a record boundary');
  const { key, iv } = tls13TrafficKeys(suite, secret);
  let opened: OpenedRecord[] | undefined;
  for (let start = 0; start < raw.length && !opened; start++) {
    const prot = new RecordProtection(suite, key, iv, 0n);
    try {
      opened = raw.slice(start).map(([h, b]) => prot.open(h, b));
    } catch {
      // a handshake-key record: start later
    } finally {
      prot.wipe();
    }
  }
  assert.ok(opened, 'a run of records under the server application key reaches the end of the stream');
  const recs = opened;
  const last = recs.at(-1)!;
  assert.deepEqual([last.type, ...last.plaintext], [21, 1, 0], 'the last record the proxy sent is a warning close_notify alert');
  assert.ok(
    recs.slice(0, -1).every((r) => r.type === 23 || r.type === 22),
    `only data and tickets before it: ${recs.map((r) => r.type)}`,
  );
  return Buffer.concat(recs.filter((r) => r.type === 23).map((r) => r.plaintext));
}

/** The first log line after `mark` matching `re`. */
async function logLine(p: RunningProxy, mark: number, re: RegExp): Promise<string> {
  let hit: string | undefined;
  const find = () => (hit = p.logs().find((l, i) => i >= mark && re.test(l))) !== undefined;
  await eventually(find, 30_000).catch(() => assert.fail(`no log line matching ${re}; logs since the test began:\n${p.logs().slice(mark).join('\n')}`));
  return hit!;
}

/** The id of the first connection the proxy established (in the kernel) after `mark`, and the line that logged its close. */
async function closedReason(p: RunningProxy, mark: number): Promise<{ id: string; line: string }> {
  const est = await logLine(p, mark, /"msg":"established"/);
  assert.match(est, new RegExp(`"mode":"${mode}"`), `the connection is carried in ${mode} mode`);
  const id = /"conn":"(c\d+)"/.exec(est)![1]!;
  return { id, line: await logLine(p, mark, new RegExp(`"conn":"${id}".*"msg":"closed: `)) };
}

/** A fresh connection echoes through the proxy (the backend echoes by default). */
async function roundTrip(p: RunningProxy): Promise<void> {
  const mark = p.logs().length;
  const { c } = await connectTls(p.port);
  const ping = crypto.randomBytes(3000);
  const echoed = collect(c);
  let n = 0;
  c.on('data', (d: Buffer) => (n += d.length));
  c.write(ping);
  await eventually(() => n >= ping.length, 30_000, 'the echo');
  c.end(); // only now: a FIN before the kernel has the session fails the install (see the report on ENOTCONN)
  assert.ok((await echoed).equals(ping), 'a fresh connection echoes through the proxy');
  assert.match((await closedReason(p, mark)).line, /closed: both sides closed/);
}

/** The end of every test: the proxy is alive, back at its fd baseline, and still relays a fresh connection. */
async function cleanAndServing(p: RunningProxy, baseline: number): Promise<void> {
  const backToBaseline = () =>
    eventually(() => p.fdCount() === baseline, 30_000).catch(() => assert.fail(`proxy has ${p.fdCount()} fds open, baseline ${baseline}`));
  await backToBaseline();
  assert.equal(p.child.exitCode, null, 'the proxy is still running');
  await roundTrip(p);
  await backToBaseline();
}

export function closeBehaviourScenarios(m: Mode): void {
  mode = m;
  before(async () => {
    assertLaneKernel(mode);
    cert = await makeCert(dir, 'ec');
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  describe(`closing relayed connections (${mode} mode)`, () => {
    let backend: Awaited<ReturnType<typeof scriptedBackend>>;
    let proxy: RunningProxy;
    before(async () => {
      backend = await scriptedBackend();
      proxy = await startProxyProcess({ backendPort: backend.port, cert, args: modeArgs(mode) });
      await roundTrip(proxy); // warm-up: the first relayed connection opens two epoll fds for good
    });
    after(async () => {
      await proxy?.stop();
      await backend?.close();
    });

    test('a client close_notify half-closes the backend, which can still send everything it has before the client gets close_notify and EOF', T, async () => {
      const base = proxy.fdCount();
      const mark = proxy.logs().length;
      const counters = (await proxy.status()).counters;
      const final = streamChunk('final words', 0, 100_000);
      const backendGot = new Promise<Buffer>((resolve) =>
        backend.next((s) => {
          const got: Buffer[] = [];
          s.on('data', (d: Buffer) => got.push(d));
          s.on('end', () => {
            s.end(final);
            resolve(Buffer.concat(got));
          });
        }),
      );
      const tap = await wireTap(proxy.port);
      try {
        const client = await connectTls(tap.port);
        const received = collect(client.c);
        client.c.write('last request');
        await logLine(proxy, mark, /"msg":"established"/); // the kernel refuses a session on a socket that already got FIN
        client.c.end();
        assert.equal((await backendGot).toString(), 'last request', 'the backend saw the request, then end');
        const got = await received;
        assert.equal(got.length, final.length);
        assert.ok(got.equals(final), 'the client received the backend’s final payload exactly');
        await eventually(() => tap.proxyFin, 10_000, 'FIN from the proxy');
        assert.ok(dataThenCloseNotify(Buffer.concat(tap.fromProxy), client).equals(final), 'on the wire: the payload, then close_notify, then FIN');
        assert.match((await closedReason(proxy, mark)).line, /closed: both sides closed/);
        await countedAs(proxy, counters, 'completed');
      } finally {
        tap.server.close();
      }
      await cleanAndServing(proxy, base);
    });

    test('a backend FIN reaches the client as close_notify and EOF after its data, and the client can still send until it ends too', T, async () => {
      const base = proxy.fdCount();
      const mark = proxy.logs().length;
      const counters = (await proxy.status()).counters;
      const down = streamChunk('backend then FIN', 0, 50_000);
      const backendGot = new Promise<Buffer>((resolve) =>
        backend.next((s) => {
          const got: Buffer[] = [];
          s.on('data', (d: Buffer) => got.push(d));
          s.on('end', () => resolve(Buffer.concat(got)));
          s.end(down);
        }),
      );
      const tap = await wireTap(proxy.port);
      try {
        const client = await connectTls(tap.port);
        let sent = 0;
        const send = (n: number) => (client.c.write(streamChunk('client keeps sending', sent, n)), (sent += n));
        const ticker = setInterval(() => send(1000), 20);
        send(1000);
        const got = await collect(client.c).finally(() => clearInterval(ticker));
        assert.ok(got.equals(down), 'the client received the backend’s data exactly, then end');
        await eventually(() => tap.proxyFin, 10_000, 'FIN from the proxy');
        assert.ok(dataThenCloseNotify(Buffer.concat(tap.fromProxy), client).equals(down), 'on the wire: the data, then close_notify, then FIN');
        send(20_000); // after the proxy's close_notify the client direction stays open
        client.c.end();
        const up = await backendGot;
        assert.equal(up.length, sent, 'the backend received every byte the client sent, before and after the close_notify');
        assert.ok(up.equals(streamChunk('client keeps sending', 0, sent)));
        assert.match((await closedReason(proxy, mark)).line, /closed: both sides closed/);
        await countedAs(proxy, counters, 'completed');
      } finally {
        tap.server.close();
      }
      await cleanAndServing(proxy, base);
    });

    test('a client that resets mid-stream gets its backend connection closed and a logged reason, and the proxy keeps going', T, async () => {
      const base = proxy.fdCount();
      const mark = proxy.logs().length;
      const counters = (await proxy.status()).counters;
      let backendBytes = 0;
      let backendClosed = '';
      backend.next((s) => {
        s.on('data', (d: Buffer) => (backendBytes += d.length));
        s.on('end', () => ((backendClosed ||= 'end'), s.end()));
        s.on('error', (e: NodeJS.ErrnoException) => (backendClosed ||= e.code ?? 'error'));
      });
      const { c, tcp } = await connectTls(proxy.port);
      c.on('error', () => {});
      let streaming = true;
      const gone = new Promise((r) => c.once('close', r));
      const streamer = (async () => {
        for (let off = 0; streaming && !c.destroyed; off += 16_384) {
          if (!c.write(streamChunk('reset me', off, 16_384))) await Promise.race([new Promise((r) => c.once('drain', r)), gone]);
        }
      })();
      await eventually(() => backendBytes >= 256 * 1024, 30_000, 'the backend receiving the stream');
      tcp.resetAndDestroy(); // SO_LINGER 0 + close: RST
      streaming = false;
      await streamer;
      await eventually(() => backendClosed !== '', 30_000, 'the backend connection being closed');
      const { id, line } = await closedReason(proxy, mark);
      assert.match(line, new RegExp(`"conn":"${id}".*"msg":"closed: read from client: ECONNRESET"`));
      assert.match(line, /"level":30/, "a client's reset is an ordinary close (info), not a warning");
      await countedAs(proxy, counters, 'client_error');
      await cleanAndServing(proxy, base);
    });

    test('a client that closes TCP without close_notify gets its data delivered, then its backend closed, and "truncation" logged', T, async () => {
      const base = proxy.fdCount();
      const mark = proxy.logs().length;
      const counters = (await proxy.status()).counters;
      const up = streamChunk('truncated', 0, 64_000);
      const backendGot = new Promise<Buffer>((resolve) =>
        backend.next((s) => {
          const got: Buffer[] = [];
          s.on('data', (d: Buffer) => got.push(d));
          s.on('end', () => (resolve(Buffer.concat(got)), s.end()));
        }),
      );
      const { c, tcp } = await connectTls(proxy.port);
      c.on('error', () => {});
      await new Promise((r) => c.write(up, r));
      await logLine(proxy, mark, /"msg":"established"/);
      tcp.end(); // FIN from under the TLS layer: no close_notify
      const got = await backendGot;
      assert.equal(got.length, up.length);
      assert.ok(got.equals(up), 'the backend received all the data before its connection closed');
      const closed = (await closedReason(proxy, mark)).line;
      assert.match(closed, /closed: .*truncation/);
      assert.match(closed, /"level":30/, 'a truncation is the client’s doing: an ordinary close (info), not a warning');
      await countedAs(proxy, counters, 'client_truncated');
      c.destroy();
      await cleanAndServing(proxy, base);
    });

    // In user mode KeyUpdate is carried out instead (relay/key-update.test.ts).
    if (mode === 'kernel')
      test('openssl s_client sending KeyUpdate on a kernel that cannot rekey gets a fatal alert and the proxy logs KeyUpdate', T, async () => {
        const base = proxy.fdCount();
        const mark = proxy.logs().length;
        const counters = (await proxy.status()).counters;
        assert.equal((await proxy.status()).ktls.rekey, false, 'the scenario needs a kernel that cannot rekey (< 6.13)');
        // Interactive mode (no -quiet, no -ign_eof): a line "k" makes s_client send KeyUpdate(update_not_requested).
        const child = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${proxy.port}`, '-tls1_3'], { stdio: ['pipe', 'pipe', 'pipe'] });
        let out = '';
        child.stdout.on('data', (d: Buffer) => (out += d));
        child.stderr.on('data', (d: Buffer) => (out += d));
        const exited = new Promise<number | null>((r) => child.once('exit', r));
        try {
          child.stdin.write('hello before the update\n');
          await eventually(() => /^hello before the update$/m.test(out), 30_000, 'the echo through s_client').catch(() =>
            assert.fail(`no echo; s_client said:\n${out}`),
          );
          child.stdin.write('k\n');
          const code = await Promise.race([exited, new Promise((r) => setTimeout(r, 30_000, 'still running'))]);
          assert.match(out, /KEYUPDATE/, 's_client sent the KeyUpdate');
          assert.match(out, /alert internal error[\s\S]*alert number 80/, `s_client got a fatal internal_error alert:\n${out}`);
          assert.notEqual(code, 'still running', 's_client exited after the alert');
          assert.match((await closedReason(proxy, mark)).line, /closed: client sent KeyUpdate/);
          await countedAs(proxy, counters, 'protocol_error');
        } finally {
          child.kill();
        }
        await cleanAndServing(proxy, base);
      });

    const GARBAGE = [
      { what: 'an HTTP request', bytes: Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), alert: 0x0a, log: /client sent plaintext/ },
      {
        what: 'a handshake record header claiming more than 2^14+256 bytes',
        bytes: Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x41, 0x01]), streamChunk('garbage', 0, 59)]),
        alert: 0x16,
        log: /record length 16641 exceeds 2\^14\+256/,
      },
    ];
    /** Sends `bytes` over raw TCP; resolves with what came back and how it ended ('EOF' or an error code). */
    async function sendGarbage(bytes: Buffer): Promise<{ got: Buffer; end: string }> {
      const s = net.connect({ port: proxy.port, host: '127.0.0.1' });
      await once(s, 'connect');
      const got: Buffer[] = [];
      s.on('data', (d: Buffer) => got.push(d));
      const end = new Promise<string>((r) => {
        s.once('end', () => r('EOF'));
        s.once('error', (e: NodeJS.ErrnoException) => r(e.code ?? e.message));
      });
      s.write(bytes);
      const how = await end.finally(() => s.destroy());
      return { got: Buffer.concat(got), end: how };
    }

    for (const g of GARBAGE) {
      test(`a client sending ${g.what} instead of a ClientHello gets one plaintext alert ${g.alert} record then EOF, with the reason logged`, T, async () => {
        const base = proxy.fdCount();
        const mark = proxy.logs().length;
        const failedBefore = (await proxy.status()).counters.handshake_failed_malformed ?? 0;
        const { got, end } = await sendGarbage(g.bytes);
        assert.deepEqual([...got], [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, g.alert], `one fatal alert record, then ${end}`);
        assert.equal(end, 'EOF', 'a FIN after the alert, not a reset');
        assert.match(await logLine(proxy, mark, g.log), /"conn":"c\d+".*"reason":"malformed"/);
        assert.equal((await proxy.status()).counters.handshake_failed_malformed, failedBefore + 1, 'counted once as handshake_failed_malformed');
        await cleanAndServing(proxy, base);
      });
    }
  });

  describe(`a backend that refuses connections (${mode} mode)`, () => {
    let proxy: RunningProxy;
    let port: number;
    before(async () => {
      const warmup = await scriptedBackend();
      port = warmup.port;
      proxy = await startProxyProcess({ backendPort: port, cert, args: modeArgs(mode) });
      await roundTrip(proxy); // warm-up, as above
      await warmup.close(); // nothing listens there now
    });
    after(() => proxy?.stop());

    test('a client completes the handshake, then gets a fatal internal_error alert, and the proxy logs ECONNREFUSED', T, async () => {
      const base = proxy.fdCount();
      const mark = proxy.logs().length;
      const before = (await proxy.status()).counters;
      const { c } = await connectTls(proxy.port);
      const [err] = (await once(c, 'error')) as [NodeJS.ErrnoException];
      assert.equal(err.code, 'ERR_SSL_TLSV1_ALERT_INTERNAL_ERROR', `client error: ${err.message}`);
      assert.match(err.message, /alert number 80/);
      assert.match(await logLine(proxy, mark, /ECONNREFUSED/), /"conn":"c\d+".*"reason":"refused"/);
      const after = (await proxy.status()).counters;
      assert.equal(after.handshakes_ok, (before.handshakes_ok ?? 0) + 1, 'the handshake itself counted as ok');
      assert.equal(after.backend_refused, (before.backend_refused ?? 0) + 1, 'the refusal counted as backend_refused');
      // Once a backend listens there, the same proxy relays.
      const backend = await scriptedBackend(port);
      try {
        await cleanAndServing(proxy, base);
      } finally {
        await backend.close();
      }
    });
  });
}
