// The fd store end to end, with a fake systemd keeping the descriptors: deposits and removals, closes the peer sees at once, kill -9 and restart; run per mode.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { test } from 'node:test';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { modeArgs, type Mode } from '../scenarios/real-clients.scenarios.js';
import { LISTENER_FDNAME } from '../service/fd-store.js';
import { halfCloseBackend, streamChunk } from '../testkit/backends.js';
import { echoStream, type EchoStream } from '../testkit/echo-stream.js';
import { laneWithEchoBackend } from '../testkit/lane.js';
import { FakeNotifySocket } from '../testkit/notify-socket.js';
import { CLI, eventually, startProxyProcess, type RunningProxy } from '../testkit/proxy-process.js';

const run = promisify(execFile);

/** A TLS client held open: echoes on demand, and notes when (and how) the connection ended. */
interface HeldClient {
  roundTrip(text: string): Promise<void>;
  /** When 'end' or 'close' arrived, if it has. */
  endedAt(): number | undefined;
  errors: string[];
  socket: tls.TLSSocket;
}

function heldClient(port: number): Promise<HeldClient> {
  return new Promise((resolve, reject) => {
    const errors: string[] = [];
    let endedAt: number | undefined;
    let inbox = '';
    const s = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false });
    s.setEncoding('utf8');
    s.on('data', (d: string) => (inbox += d));
    s.on('error', (e: NodeJS.ErrnoException) => errors.push(e.code ?? e.message));
    s.on('end', () => (endedAt ??= Date.now()));
    s.on('close', () => (endedAt ??= Date.now()));
    s.once('error', reject);
    s.once('secureConnect', () => {
      s.off('error', reject);
      resolve({
        socket: s,
        errors,
        endedAt: () => endedAt,
        async roundTrip(text) {
          inbox = '';
          s.write(text);
          await eventually(() => inbox === text, 10_000, `the echo of ${JSON.stringify(text)}`);
        },
      });
    });
  });
}

/** Store entries that are connections, by name. */
const connections = (entries: Map<string, number>) => new Map([...entries].filter(([name]) => name.startsWith('conn-')));

export function fdStoreScenarios(mode: Mode, pace: { chunk: number; everyMs: number; streams: number }): void {
  /** Descriptors per stored connection: record, client, backend, and in kernel mode two pipes (both ends). */
  const perConnection = mode === 'kernel' ? 7 : 3;
  const slow = mode === 'kernel' ? 10 : 1; // the guest's one slow CPU
  const echo = laneWithEchoBackend(mode);
  let notify: FakeNotifySocket;
  const withStore = (config?: string) =>
    startProxyProcess({ backendPort: echo().port, args: [...modeArgs(mode), '--fd-store'], env: { NOTIFY_SOCKET: notify.address }, config });
  /** The proxy again, as systemd restarts it: same address, the store's descriptors at fds 3, 4, ... */
  const restart = (port: number, opts: { fdStore?: boolean; backendPort?: number } = {}) => {
    const back = notify.handBack();
    const backendPort = opts.backendPort ?? echo().port;
    return startProxyProcess({
      backendPort,
      noListenFlags: true,
      args: ['--listen', `127.0.0.1:${port}`, '--backend', `127.0.0.1:${backendPort}`, ...modeArgs(mode), ...(opts.fdStore === false ? [] : ['--fd-store'])],
      env: { NOTIFY_SOCKET: notify.address },
      activate: back.fds,
      activateNames: back.env.LISTEN_FDNAMES.split(':'),
    });
  };

  test(`each ${mode}-mode connection is in the fd store while it lives and leaves it when it closes; a stopped proxy leaves nothing there`, async () => {
    notify = new FakeNotifySocket();
    const proxy = await withStore();
    const clients: HeldClient[] = [];
    try {
      await notify.waitForStore((e) => e.get(LISTENER_FDNAME) === 1);
      for (let i = 0; i < 3; i++) clients.push(await heldClient(proxy.port));
      for (const c of clients) await c.roundTrip('hello through the store');
      const held = await notify.waitForStore((e) => connections(e).size === 3, 5000 * slow);
      for (const [name, n] of connections(held)) assert.equal(n, perConnection, `${name} holds ${n} descriptors`);
      const deposits = notify.messages().filter((m) => m.fields.FDSTORE === '1' && m.fields.FDNAME?.startsWith('conn-'));
      assert.ok(deposits.length === 3 && deposits.every((m) => m.fields.FDPOLL === '0'), 'connections are deposited with FDPOLL=0');
      const s = await proxy.status();
      for (const c of s.connections) assert.equal(c.mode, mode);
      // A normal close (close_notify, FIN): the entry goes, and the client sees the end.
      const first = clients[0]!;
      first.socket.end();
      await eventually(() => first.endedAt() !== undefined, 5000 * slow, 'the first client to see the close');
      await notify.waitForStore((e) => connections(e).size === 2, 5000 * slow);
      assert.equal(await proxy.stop(), 0);
      // Shutting down closes the rest, and each leaves the store first; so does the listener.
      const left = await notify.waitForStore((e) => e.size === 0, 5000 * slow);
      assert.deepEqual([...left], []);
      await eventually(() => clients.every((c) => c.endedAt() !== undefined), 5000 * slow, 'every client to see the shutdown');
      for (const c of clients) assert.deepEqual(c.errors, []);
    } finally {
      for (const c of clients) c.socket.destroy();
      await proxy.stop();
      notify.close();
    }
  });

  test(`a ${mode}-mode connection the proxy closes on its own (idle timeout) leaves the store first, so its client sees the close at once`, async () => {
    notify = new FakeNotifySocket();
    const proxy = await withStore('[timeouts]\nidle = "1s"\n');
    let client: HeldClient | undefined;
    try {
      client = await heldClient(proxy.port);
      await client.roundTrip('then silence');
      await notify.waitForStore((e) => connections(e).size === 1, 5000 * slow);
      const quietSince = Date.now();
      // The idle check runs once a second: closed after 1-2 s. Were the store still holding a copy
      // of the socket, the close would never reach the client.
      await eventually(() => client!.endedAt() !== undefined, 5000 * slow, 'the client to see the idle close');
      assert.ok(client.endedAt()! - quietSince < 4000 * slow, `the close took ${client.endedAt()! - quietSince} ms`);
      await notify.waitForStore((e) => connections(e).size === 0, 2000 * slow);
      await eventually(async () => (await proxy.status()).counters.closed_idle_timeout === 1, 5000 * slow, 'the close to be counted');
    } finally {
      client?.socket.destroy();
      await proxy.stop();
      notify.close();
    }
  });

  test(`an in-place upgrade keeps every ${mode}-mode connection in the store under its id, its old entry replaced rather than added to`, async () => {
    notify = new FakeNotifySocket();
    const proxy = await withStore();
    const clients: HeldClient[] = [];
    try {
      for (let i = 0; i < 3; i++) clients.push(await heldClient(proxy.port));
      for (const c of clients) await c.roundTrip('before the upgrade');
      const before = connections(await notify.waitForStore((e) => connections(e).size === 3, 5000 * slow));
      const { stdout } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket, '--timeout', '300']);
      assert.equal(JSON.parse(stdout).moved, 3);
      for (const c of clients) await c.roundTrip('after the upgrade');
      // Same names, and each still exactly one connection's descriptors (the old entry was replaced, not added to).
      const afterUpgrade = connections(notify.stored());
      assert.deepEqual([...afterUpgrade.keys()].sort(), [...before.keys()].sort());
      for (const [name, n] of afterUpgrade) assert.equal(n, perConnection, `${name} holds ${n} descriptors`);
      assert.equal(notify.stored().get(LISTENER_FDNAME), 1);
      const last = clients.pop()!;
      last.socket.end();
      await eventually(() => last.endedAt() !== undefined, 5000 * slow, 'the client to see its close');
      await notify.waitForStore((e) => connections(e).size === 2, 5000 * slow);
      for (const c of clients) c.socket.destroy();
      await notify.waitForStore((e) => connections(e).size === 0, 5000 * slow);
    } finally {
      for (const c of clients) c.socket.destroy();
      await proxy.stop();
      notify.close();
    }
  });

  test(`a ${mode}-mode connection that ends while the upgrade bridge relays it leaves the store once the new image takes the rest back`, async () => {
    notify = new FakeNotifySocket();
    const proxy = await withStore();
    const clients: HeldClient[] = [];
    try {
      for (let i = 0; i < 2; i++) clients.push(await heldClient(proxy.port));
      for (const c of clients) await c.roundTrip('before the upgrade');
      await notify.waitForStore((e) => connections(e).size === 2, 5000 * slow);
      const leaving = clients.pop()!;
      const id = (await proxy.status()).connections.find((c) => c.client === `127.0.0.1:${leaving.socket.localPort}`)?.id;
      assert.ok(id, 'the leaving client is in the status');
      const upgrade = run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket, '--timeout', '300']);
      // Once every connection is in the bridge (the old image is about to exec), this client ends:
      // only the bridge sees it, and the bridge cannot reach the store.
      await proxy.waitForLog(/every connection is in the upgrade bridge/, 60_000 * slow);
      leaving.socket.end();
      await eventually(() => leaving.endedAt() !== undefined, 10_000 * slow, 'the leaving client to see its close');
      assert.equal(JSON.parse((await upgrade).stdout).moved, 1, 'only the other connection comes back from the bridge');
      const closedThere = new RegExp(`"conn":"${id}".*closed: .*\\(during an upgrade\\)`);
      assert.ok(
        proxy.logs().some((l) => closedThere.test(l)),
        `${id} ended in the bridge; log: ${proxy
          .logs()
          .filter((l) => l.includes(id))
          .join('\n')}`,
      );
      const left = connections(await notify.waitForStore((e) => connections(e).size === 1, 5000 * slow));
      assert.ok(!left.has(`conn-${id}`), `conn-${id} is still in the store`);
      await clients[0]!.roundTrip('after the upgrade');
    } finally {
      for (const c of clients) c.socket.destroy();
      await proxy.stop();
      notify.close();
    }
  });

  if (mode === 'user') {
    test('after kill -9 and a restart with the store, user-mode connections are closed without a reset and counted, and the listener serves again', async () => {
      notify = new FakeNotifySocket();
      const proxy = await withStore();
      const clients: HeldClient[] = [];
      let again: RunningProxy | undefined;
      try {
        const idleFds = proxy.fdCount();
        for (let i = 0; i < 4; i++) clients.push(await heldClient(proxy.port));
        for (const c of clients) await c.roundTrip('before the crash');
        await notify.waitForStore((e) => connections(e).size === 4 && e.get(LISTENER_FDNAME) === 1);
        await proxy.crash();
        // The store holds every socket: nothing reaches the clients while no proxy runs.
        await new Promise((r) => setTimeout(r, 500));
        for (const c of clients) assert.equal(c.endedAt(), undefined, 'a client saw its connection end while the store held it');
        const oldNames = [...connections(notify.stored()).keys()];
        again = await restart(proxy.port);
        assert.equal(again.port, proxy.port, 'the stored listener is adopted, not a new one bound');
        await eventually(() => clients.every((c) => c.endedAt() !== undefined), 10_000, 'every client to see its connection closed');
        for (const c of clients) assert.deepEqual(c.errors, [], 'closed with a FIN, not a reset');
        const s = await again.status();
        assert.equal(s.counters.closed_not_resumable, 4);
        assert.equal(s.counters.connections_closed, 4);
        assert.equal(s.connections.length, 0);
        await notify.waitForStore((e) => connections(e).size === 0 && e.get(LISTENER_FDNAME) === 1);
        // New clients are served, and numbered after the old ones (their store names never collide).
        const fresh = await heldClient(again.port);
        clients.push(fresh);
        await fresh.roundTrip('after the restart');
        const now = await notify.waitForStore((e) => connections(e).size === 1);
        const [name] = [...connections(now).keys()];
        assert.ok(!oldNames.includes(name!), `${name} reuses an old connection's name (${oldNames.join(', ')})`);
        assert.ok(again.logs().some((l) => /fd store: resumed 0 connection\(s\), closed 4 that cannot resume/.test(l)));
        // Nothing of the old connections stays open in the new process: once the new one is gone too,
        // it holds no more descriptors than the first one did before any client came (one fewer is seen:
        // libuv opens some of its own lazily, so the first process may have had one the second has not yet).
        fresh.socket.end();
        await notify.waitForStore((e) => connections(e).size === 0);
        await eventually(() => again!.fdCount() <= idleFds, 5000, `the restarted proxy to hold at most ${idleFds} descriptors (it holds ${again.fdCount()})`);
      } finally {
        for (const c of clients) c.socket.destroy();
        await again?.stop();
        await proxy.stop();
        notify.close();
      }
    });

    test('a restart with fd_store turned off closes what the store handed back and empties it, listener entry included', async () => {
      notify = new FakeNotifySocket();
      const proxy = await withStore();
      const clients: HeldClient[] = [];
      let again: RunningProxy | undefined;
      try {
        for (let i = 0; i < 2; i++) clients.push(await heldClient(proxy.port));
        for (const c of clients) await c.roundTrip('before');
        await notify.waitForStore((e) => connections(e).size === 2 && e.get(LISTENER_FDNAME) === 1);
        await proxy.crash();
        again = await restart(proxy.port, { fdStore: false });
        assert.equal(again.port, proxy.port);
        await eventually(() => clients.every((c) => c.endedAt() !== undefined), 10_000, 'every client to see its connection closed');
        for (const c of clients) assert.deepEqual(c.errors, []);
        await notify.waitForStore((e) => e.size === 0);
        const fresh = await heldClient(again.port);
        clients.push(fresh);
        await fresh.roundTrip('served without the store');
        assert.equal(notify.stored().size, 0, 'nothing is deposited with fd_store off');
      } finally {
        for (const c of clients) c.socket.destroy();
        await again?.stop();
        await proxy.stop();
        notify.close();
      }
    });

    test("a FileDescriptorStoreMax= (systemd's $FDSTORE) too small for max_connections is warned about", async () => {
      notify = new FakeNotifySocket();
      const proxy = await startProxyProcess({
        backendPort: echo().port,
        args: [...modeArgs(mode), '--fd-store'],
        env: { NOTIFY_SOCKET: notify.address, FDSTORE: '700' },
        config: '[limits]\nmax_connections = 1000\n',
      });
      try {
        await proxy.waitForLog(/FileDescriptorStoreMax=700 keeps about 100 kernel-mode connections; max_connections is 1000 \(set it to 7000 or more\)/, 5000);
      } finally {
        await proxy.stop();
        notify.close();
      }
    });

    test('--fd-store without NOTIFY_SOCKET says so and runs without the store', async () => {
      const proxy = await startProxyProcess({ backendPort: echo().port, args: [...modeArgs(mode), '--fd-store'], env: { NOTIFY_SOCKET: '' } });
      try {
        await proxy.waitForLog(/fd_store is on but NOTIFY_SOCKET is not set \(not started by systemd\): running without the fd store/, 5000);
        const c = await heldClient(proxy.port);
        await c.roundTrip('served all the same');
        c.socket.destroy();
      } finally {
        await proxy.stop();
      }
    });
  }

  if (mode === 'kernel') {
    test('a kernel-mode connection half-closed by the client before kill -9 still gets everything the backend sends after the restart', async () => {
      // A backend that, once the client's side ends, sends 20 chunks, then 20 more once the proxy is back, then ends.
      const chunks = 40;
      let restarted!: () => void;
      const back = new Promise<void>((r) => (restarted = r));
      const server = await halfCloseBackend('half', chunks, back);
      const backendPort = server.port;
      notify = new FakeNotifySocket();
      const proxy = await startProxyProcess({ backendPort, args: [...modeArgs(mode), '--fd-store'], env: { NOTIFY_SOCKET: notify.address } });
      let again: RunningProxy | undefined;
      try {
        const received = await new Promise<Buffer>((resolve, reject) => {
          const s = tls.connect({ port: proxy.port, host: '127.0.0.1', rejectUnauthorized: false, allowHalfOpen: true } as tls.ConnectionOptions, () =>
            s.write('hello'),
          );
          const got: Buffer[] = [];
          s.once('data', () => {
            // Relaying (the backend answered): close_notify + FIN now, and the proxy half-closes the backend.
            s.end();
            s.on('data', (d: Buffer) => got.push(d));
            setTimeout(async () => {
              try {
                await notify.waitForStore((e) => connections(e).size === 1);
                await proxy.crash();
                again = await restart(proxy.port, { backendPort });
                restarted();
              } catch (e) {
                reject(e as Error);
              }
            }, 300 * slow);
          });
          s.on('end', () => resolve(Buffer.concat(got)));
          s.on('error', (e) => reject(new Error(`${e.message} after ${got.reduce((n, b) => n + b.length, 0)} bytes`)));
        });
        assert.equal(received.length, chunks * 4096);
        assert.ok(received.equals(streamChunk('half', 0, chunks * 4096)), 'bytes differ');
        assert.equal((await again!.status()).counters.fd_store_resumed, 1);
        await notify.waitForStore((e) => connections(e).size === 0, 10_000 * slow);
      } finally {
        await again?.stop();
        await proxy.stop();
        notify.close();
        server.close();
      }
    });

    test(`${pace.streams} verified kernel-mode streams survive kill -9 of the proxy and a restart from the store: every byte exact, no reset, no new handshake`, async () => {
      notify = new FakeNotifySocket();
      const proxy = await withStore('[timeouts]\nhandshake = "120s"\n');
      const streams: EchoStream[] = [];
      let again: RunningProxy | undefined;
      const acceptedBefore = echo().accepted;
      try {
        for (let i = 0; i < pace.streams; i += 10) {
          streams.push(...(await Promise.all(Array.from({ length: 10 }, (_, j) => echoStream(proxy.port, `crash-${i + j}`, pace.chunk, pace.everyMs)))));
        }
        await notify.waitForStore((e) => connections(e).size === pace.streams, 60_000);
        const before = (await proxy.status()).connections;
        assert.equal(before.length, pace.streams);
        for (const c of before) assert.equal(c.mode, 'kernel');
        const flowing = streams.map((s) => s.received());
        await proxy.crash();
        again = await restart(proxy.port);
        const s = await again.status();
        assert.equal(s.counters.fd_store_resumed, pace.streams, `resumed ${s.counters.fd_store_resumed}; log: ${again.logs().slice(-10).join('\n')}`);
        assert.equal(s.connections.length, pace.streams);
        // Every stream moves on past where it was at the crash.
        await eventually(() => streams.every((st, i) => st.received() > flowing[i]!), 120_000, 'every stream to flow again after the restart');
        const results = await Promise.all(streams.map((st) => st.finish()));
        for (const r of results)
          assert.ok(r.ok, `${r.seed}: sent ${r.sent}, received ${r.received}, mismatch at ${r.mismatchAt}, errors ${r.errors.join('; ')}`);
        const after = await again.status();
        assert.equal(after.counters.handshakes_ok ?? 0, 0, 'no new handshakes');
        assert.equal(echo().accepted - acceptedBefore, pace.streams, 'the backend saw no reconnection');
        // Each stream's close took its entry out of the store.
        await notify.waitForStore((e) => connections(e).size === 0, 60_000);
      } finally {
        for (const st of streams) st.abort();
        await again?.stop();
        await proxy.stop();
        notify.close();
      }
    });
  }
}
