// TLS 1.3 0-RTT early data from a real client (openssl s_client) is refused; run per lane (src/testkit/lanes.ts).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import tls from 'node:tls';
import { ClientHelloGatherer, offersEarlyData } from '../handshake/hello.js';
import { streamChunk } from '../testkit/backends.js';
import { makeCert, startProxyProcess, tempDir, type RunningProxy } from '../testkit/proxy-process.js';
import { echo } from '../testkit/tls-echo.js';
import { earlyDataSession, recordTap, waitForOutput } from '../testkit/zero-rtt.js';
import { modeArgs, type Mode } from './real-clients.scenarios.js';
import { assertLaneKernel } from '../testkit/lane.js';

/** s_client cuts what it sends, early data included, into records of this many bytes. */
const FRAGMENT = 512;
/** AES-GCM and ChaCha20-Poly1305 records carry a 16-byte tag and the 1-byte inner content type. */
const RECORD_OVERHEAD = 17;

/** Echoes what it receives and keeps all of it, per connection; ends a connection once `n` bytes came in (s_client then exits). */
async function keepingEchoBackend(n: number) {
  const received: Buffer[][] = [];
  const server = net.createServer((s) => {
    const mine: Buffer[] = [];
    received.push(mine);
    let got = 0;
    s.on('error', () => {});
    s.on('data', (d: Buffer) => {
      mine.push(Buffer.from(d));
      got += d.length;
      s.write(d);
      if (got >= n) s.end();
    });
  });
  server.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    /** What the n-th connection brought. */
    received: (i: number) => Buffer.concat(received[i] ?? []),
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

export function earlyDataScenarios(mode: Mode): void {
  const dir = tempDir('early-data');
  // Printable, so that the echo can be found in s_client's stdout between its handshake report lines.
  const early = Buffer.from(`EARLY-${streamChunk('0-RTT early data', 0, 1500).toString('hex')}`);
  const data = Buffer.from(`${streamChunk('1-RTT data after 0-RTT', 0, 3000).toString('hex')}\n`);
  let cert: { certFile: string; keyFile: string };
  let session: string;
  let backend: Awaited<ReturnType<typeof keepingEchoBackend>>;
  let proxy: RunningProxy;
  let tap: Awaited<ReturnType<typeof recordTap>>;

  before(async () => {
    assertLaneKernel(mode);
    cert = await makeCert(dir, 'ec');
    session = await earlyDataSession(dir, cert);
    fs.writeFileSync(path.join(dir, 'early.txt'), early);
    backend = await keepingEchoBackend(data.length);
    proxy = await startProxyProcess({ backendPort: backend.port, cert, args: modeArgs(mode) });
    tap = await recordTap(proxy.port);
  });

  after(async () => {
    await tap?.close();
    await proxy?.stop();
    await backend?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test(`a client sending 0-RTT early data has it refused: the backend never sees it, the handshake completes in 1-RTT, data after it flows byte-exact, and early_data_refused counts it (${mode} mode)`, async (t) => {
    // A client that offers no early data is not counted.
    const plain = tls.connect({ port: proxy.port, host: '127.0.0.1', servername: 'localhost', rejectUnauthorized: false });
    await new Promise((r, j) => plain.once('secureConnect', r).once('error', j));
    assert.equal(await echo(plain, 'no early data here'), 'no early data here');
    plain.destroy();
    assert.equal((await proxy.status()).counters.early_data_refused, undefined, 'a plain handshake does not count');

    const args = ['s_client', '-connect', `127.0.0.1:${tap.port}`, '-servername', 'localhost', '-tls1_3', '-ign_eof'];
    args.push('-sess_in', session, '-early_data', path.join(dir, 'early.txt'), '-max_send_frag', String(FRAGMENT));
    const client = spawn('openssl', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const killer = setTimeout(() => client.kill('SIGKILL'), 30_000);
    let out = '';
    client.stdout.on('data', (d: Buffer) => (out += d.toString('latin1')));
    client.stderr.on('data', (d: Buffer) => (out += d.toString('latin1')));
    const exited = new Promise<number | null>((r) => client.once('exit', r));
    try {
      // s_client reports on the early data once its handshake is complete; only then does it get its 1-RTT data.
      await waitForOutput(client, /Early data was (rejected|accepted|not sent)/);
      client.stdin.write(data);
      const code = await exited;
      assert.match(out, /Early data was rejected/, 'the proxy refused the early data');
      assert.match(out, /^New, TLSv1\.3/m, 'a new (1-RTT, full) handshake, not a resumption');
      assert.ok(out.includes(data.toString('latin1')), `the data came back byte-exact (s_client exit ${code}):\n${out.slice(-3000)}`);
    } finally {
      clearTimeout(killer);
      client.kill();
    }

    // What s_client really sent: a ClientHello offering early_data, then the early data in 0-RTT records.
    const sent = tap.records(0);
    const hello = new ClientHelloGatherer();
    const clientHello = sent.map((r) => hello.push(r.bytes)).find((m) => m !== undefined);
    assert.ok(clientHello && offersEarlyData(clientHello), 'the ClientHello offers early_data (extension 42)');
    const afterHello = sent.slice(1).filter((r) => r.type !== 20); // past the middlebox-compatibility ChangeCipherSpec
    const expected = [];
    for (let n = early.length; n > 0; n -= FRAGMENT) expected.push(Math.min(n, FRAGMENT) + RECORD_OVERHEAD);
    assert.deepEqual(
      afterHello.slice(0, expected.length).map((r) => [r.type, r.bytes.length - 5]),
      expected.map((len) => [23, len]),
      `${early.length} early bytes sent as ${expected.length} 0-RTT application_data records`,
    );

    assert.equal(backend.received(0).toString(), 'no early data here');
    const seen = backend.received(1);
    assert.equal(seen.indexOf('EARLY-'), -1, 'no early byte reached the backend');
    assert.ok(seen.equals(data), `the backend got exactly the ${data.length} bytes sent after the handshake (got ${seen.length})`);

    // Finished, then the data in records of FRAGMENT bytes: a wrong receive sequence number would fail the first of them.
    const protectedAfter = afterHello.slice(expected.length);
    assert.ok(protectedAfter.length >= 1 + Math.ceil(data.length / FRAGMENT), `${protectedAfter.length} records after the early data`);
    t.diagnostic(
      `0-RTT: ${early.length} early bytes offered in ${expected.length} records, 0 seen by the backend; ` +
        `then ${protectedAfter.length} protected records (Finished, ${data.length} data bytes, close), ${seen.length} bytes relayed and echoed`,
    );
    const status = await proxy.status();
    assert.equal(status.counters.early_data_refused, 1, 'counted once');
    assert.equal(status.counters.handshakes_ok, 2, 'both handshakes succeeded');
    const established = proxy.logs().filter((l) => l.includes('"msg":"established"'));
    assert.equal(established.length, 2);
    assert.match(established[1]!, new RegExp(`"version":"TLSv1.3".*"mode":"${mode}".*"rxSeq":"0"`));
    assert.ok(
      proxy.logs().some((l) => l.includes('client offered 0-RTT early data: refused')),
      'the refusal is logged',
    );
  });
}
