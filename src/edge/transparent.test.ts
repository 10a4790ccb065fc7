// Proves the transparent source end to end in network namespaces: the backend sees the client's address, and its replies reach the proxy.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Poller } from '../kernel/poller.js';
import { createTopology, type Role, type Topology } from '../testkit/netns.js';
import { BackendError, connectBackend } from './backend.js';

const testkit = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'testkit');
const connectScript = path.join(testkit, 'transparent-connect.js');
const echoScript = path.join(testkit, 'recording-echo.js');

/** A recording echo server in the backend namespace: its port, and the client addresses it saw, in order. */
interface Recorder {
  port: number;
  nextRemote(): Promise<string>;
  child: ChildProcess;
}

interface Setup {
  topo: Topology;
  v4: Recorder;
  v6: Recorder;
}

function startRecorder(topo: Topology, host: string): Promise<Recorder> {
  const child = topo.spawnIn('backend', process.execPath, [echoScript, host], { stdio: ['ignore', 'pipe', 'inherit'] });
  const remotes: string[] = [];
  const waiters: ((r: string) => void)[] = [];
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`recording echo on ${host} exited (${code}) before listening`)));
    readline.createInterface({ input: child.stdout! }).on('line', (line) => {
      const msg = JSON.parse(line) as { port?: number; remote?: string };
      if (msg.port !== undefined) {
        const nextRemote = () =>
          new Promise<string>((res, rej) => {
            if (remotes.length) return res(remotes.shift()!);
            const t = setTimeout(() => rej(new Error(`no connection reached the backend on ${host}`)), 5000);
            waiters.push((r) => (clearTimeout(t), res(r)));
          });
        resolve({ port: msg.port, nextRemote, child });
      } else if (msg.remote !== undefined) {
        const w = waiters.shift();
        if (w) w(msg.remote);
        else remotes.push(msg.remote);
      }
    });
  });
}

let setupOnce: Promise<Setup> | undefined;
/** Built on first use, so that a missing `ip` or a missing root fails every test rather than skipping any. */
function setup(): Promise<Setup> {
  setupOnce ??= (async () => {
    const topo = createTopology();
    const v4 = await startRecorder(topo, topo.addrs.v4.backend);
    const v6 = await startRecorder(topo, topo.addrs.v6.backend);
    return { topo, v4, v6 };
  })();
  return setupOnce;
}

after(async () => {
  const s = await setupOnce?.catch(() => undefined);
  if (!s) return;
  for (const r of [s.v4, s.v6]) {
    r.child.removeAllListeners('exit');
    r.child.kill();
  }
  s.topo.destroy();
});

interface ConnectResult {
  ok: boolean;
  local?: { host: string; port: number };
  sent?: string;
  echoed?: string;
  reason?: string;
  message?: string;
}

/** Runs transparent-connect.js in a namespace, optionally behind a command prefix (e.g. setpriv ...). */
function connectFrom(topo: Topology, ns: Role, args: string[], prefix: string[] = []): Promise<ConnectResult> {
  const [cmd, ...rest] = [...prefix, process.execPath, connectScript, ...args];
  const child = topo.spawnIn(ns, cmd!, rest, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d));
  child.stderr!.on('data', (d: Buffer) => (err += d));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      if (code !== 0) return reject(new Error(`transparent-connect exited ${code}: ${err}`));
      resolve(JSON.parse(out.trim()) as ConnectResult);
    });
  });
}

function assertEchoed(r: ConnectResult): void {
  assert.equal(r.ok, true, r.message);
  assert.equal(r.echoed, r.sent, 'the backend echoed the bytes exactly, back through the proxy namespace');
}

test("a backend reached from a transparent IPv4 source sees the client's address, and its replies come back to the proxy", async () => {
  const { topo, v4 } = await setup();
  const { client, backend } = topo.addrs.v4;
  const r = await connectFrom(topo, 'proxy', [backend, String(v4.port), client]);
  assertEchoed(r);
  assert.equal(await v4.nextRemote(), client);
  assert.equal(r.local?.host, client, 'the socket is bound to the client address');
  assert.notEqual(r.local?.port, 0, 'the kernel chose a port');
});

test("a backend reached from a transparent IPv6 source sees the client's address, and its replies come back to the proxy", async () => {
  const { topo, v6 } = await setup();
  const { client, backend } = topo.addrs.v6;
  const r = await connectFrom(topo, 'proxy', [backend, String(v6.port), client]);
  assertEchoed(r);
  assert.equal(await v6.nextRemote(), client);
});

test('an IPv4-mapped IPv6 client address (from a dual-stack listener) is used as IPv4 for an IPv4 backend', async () => {
  const { topo, v4 } = await setup();
  const { client, backend } = topo.addrs.v4;
  const r = await connectFrom(topo, 'proxy', [backend, String(v4.port), `::ffff:${client}`]);
  assertEchoed(r);
  assert.equal(await v4.nextRemote(), client);
});

test("without a source, the backend sees the proxy's own address on the backend side", async () => {
  const { topo, v4 } = await setup();
  const r = await connectFrom(topo, 'proxy', [topo.addrs.v4.backend, String(v4.port)]);
  assertEchoed(r);
  assert.equal(await v4.nextRemote(), topo.addrs.v4.proxyBackendSide);
});

test('without CAP_NET_ADMIN and CAP_NET_RAW, a transparent connect fails with a BackendError that names the capability', async () => {
  const { topo, v4 } = await setup();
  const { client, backend } = topo.addrs.v4;
  const prefixes = {
    'root without the two capabilities': ['setpriv', '--bounding-set=-net_admin,-net_raw', '--inh-caps=-net_admin,-net_raw'],
    'an unprivileged user': ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all'],
  };
  for (const [who, prefix] of Object.entries(prefixes)) {
    const r = await connectFrom(topo, 'proxy', [backend, String(v4.port), client], prefix);
    assert.equal(r.ok, false, `${who}: the connect must fail`);
    assert.equal(r.reason, 'error', who);
    assert.match(
      r.message!,
      /setsockopt\(IP_TRANSPARENT\) failed: EPERM: transparent mode needs CAP_NET_ADMIN \(or CAP_NET_RAW\); see docs\/transparent\.md/,
      who,
    );
  }
});

test('a transparent source of the other address family than the backend is refused with a BackendError before any socket exists', async () => {
  const poller = new Poller();
  try {
    const cases: [string, string, RegExp][] = [
      ['::1', '10.0.0.1', /transparent source 10\.0\.0\.1 is IPv4 but the backend is IPv6; a transparent connection keeps the client's address family/],
      ['10.0.0.1', '2001:db8::1', /transparent source 2001:db8::1 is IPv6 but the backend is IPv4/],
      ['10.0.0.1', 'client.example', /transparent source client\.example is not an IP address/],
    ];
    for (const [backend, source, message] of cases) {
      await assert.rejects(connectBackend(poller, { host: backend, port: 80 }, 1000, undefined, { source: { host: source, port: 0 } }), (e: unknown) => {
        assert.ok(e instanceof BackendError);
        assert.equal(e.reason, 'error');
        assert.match(e.message, message);
        return true;
      });
    }
  } finally {
    poller.close();
  }
});
