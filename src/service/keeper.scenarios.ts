// `ironsocket keeper` end to end: the proxy killed with SIGKILL comes back on the same port with its connections (kernel mode) or closes them cleanly (user mode); run per mode.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import tls from 'node:tls';
import { modeArgs, type Mode } from '../scenarios/real-clients.scenarios.js';
import { echoStream, type EchoStream } from '../testkit/echo-stream.js';
import { laneWithEchoBackend } from '../testkit/lane.js';
import { eventually, startProxyProcess } from '../testkit/proxy-process.js';

/** Opens a TLS connection, sees one echo come back, and records how it ends. */
async function echoedClient(port: number): Promise<{ socket: tls.TLSSocket; ended: () => boolean; errors: string[] }> {
  const errors: string[] = [];
  let ended = false;
  const socket = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false });
  socket.on('error', (e: NodeJS.ErrnoException) => errors.push(e.code ?? e.message));
  socket.on('end', () => (ended = true));
  socket.on('close', () => (ended = true));
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => socket.write('ping'));
    socket.once('data', () => resolve());
    socket.once('error', reject);
  });
  return { socket, ended: () => ended, errors };
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

export function keeperScenarios(mode: Mode, pace: { chunk: number; everyMs: number; streams: number }): void {
  const slow = mode === 'kernel' ? 10 : 1;
  const backend = laneWithEchoBackend(mode);

  test(`ironsocket keeper restarts a proxy killed with SIGKILL on the same port, and its ${mode}-mode connections ${mode === 'kernel' ? 'carry on' : 'are closed cleanly'}`, async () => {
    const echo = backend();
    const keeper = await startProxyProcess({ backendPort: echo.port, args: modeArgs(mode), keeper: true, env: { NOTIFY_SOCKET: '' } });
    const clients: Awaited<ReturnType<typeof echoedClient>>[] = [];
    const streams: EchoStream[] = [];
    try {
      const first = (await keeper.status()).pid;
      assert.notEqual(first, keeper.pid, "the proxy is the keeper's child");
      if (mode === 'user') for (let i = 0; i < 3; i++) clients.push(await echoedClient(keeper.port));
      else for (let i = 0; i < pace.streams; i++) streams.push(await echoStream(keeper.port, `keeper-${i}`, pace.chunk, pace.everyMs));
      // A connection is deposited before its relaying starts: once bytes flow, it is in the store (and its backend
      // connection accepted: counted only now, the last stream's backend connect may still be in progress before).
      await eventually(() => streams.every((st) => st.received() > 0), 30_000 * slow, 'every stream to be relayed');
      const flowing = streams.map((s) => s.received());
      const acceptedBefore = echo.accepted;
      process.kill(first, 'SIGKILL');
      await eventually(
        async () => (await keeper.status().catch(() => undefined))?.pid !== undefined && (await keeper.status()).pid !== first,
        60_000 * slow,
        'the keeper to restart the proxy',
      );
      const s = await keeper.status();
      if (mode === 'user') {
        await eventually(() => clients.every((c) => c.ended()), 10_000, 'every client to see its connection closed');
        for (const c of clients) assert.deepEqual(c.errors, [], 'closed without a reset');
        await eventually(async () => (await keeper.status()).counters.closed_not_resumable === 3, 10_000, 'the closes to be counted');
      } else {
        assert.equal(s.counters.fd_store_resumed, pace.streams);
        await eventually(() => streams.every((st, i) => st.received() > flowing[i]!), 60_000 * slow, 'every stream to flow again');
        const results = await Promise.all(streams.map((st) => st.finish()));
        for (const r of results) assert.ok(r.ok, `${r.seed}: sent ${r.sent}, received ${r.received}, errors ${r.errors.join('; ')}`);
        assert.equal(s.counters.handshakes_ok ?? 0, 0, 'no new handshakes');
        assert.equal(echo.accepted, acceptedBefore, 'the backend saw no reconnection');
      }
      // Same port, serving.
      const fresh = await echoedClient(keeper.port);
      clients.push(fresh);
      const second = (await keeper.status()).pid;
      assert.equal(await keeper.stop(), 0);
      assert.ok(!alive(second), 'stopping the keeper stopped the proxy');
    } finally {
      for (const c of clients) c.socket.destroy();
      for (const st of streams) st.abort();
      await keeper.stop();
    }
  });
}
