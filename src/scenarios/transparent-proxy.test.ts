// Proves transparent mode through the whole proxy process in network namespaces: a TLS client's own address reaches the backend, bytes come back exactly, and this holds across an in-place upgrade.
import assert from 'node:assert/strict';
import { execFile, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { createTopology, type Topology } from '../testkit/netns.js';
import { issue } from '../testkit/pki.js';
import { CLI, eventually, startProxyProcess, tempDir, type RunningProxy } from '../testkit/proxy-process.js';

const run = promisify(execFile);
const testkit = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'testkit');
const echoScript = path.join(testkit, 'recording-echo.js');
const clientScript = path.join(testkit, 'tls-echo-client.js');

type Family = 'v4' | 'v6';
const FAMILIES: Family[] = ['v4', 'v6'];
/** Bytes each client round sends and expects back. */
const ROUND = 256 * 1024;
/** Fixed listen ports: the proxy namespace is private, so nothing else can hold them. */
const PORTS = { transparent: { v4: 4431, v6: 4432 }, plain: { v4: 4433, v6: 4434 } } as const;
type Kind = keyof typeof PORTS;

/** What the recording echo printed for one accepted connection. */
interface Peer {
  remote: string;
  remotePort: number;
}

/** A recording echo server in the backend namespace: its port, and the peers it saw, in order. */
interface Recorder {
  port: number;
  nextPeer(): Promise<Peer>;
  /** Peers seen and not yet taken by nextPeer. */
  unclaimed(): Peer[];
  child: ChildProcess;
}

function startRecorder(topo: Topology, host: string): Promise<Recorder> {
  const child = topo.spawnIn('backend', process.execPath, [echoScript, host], { stdio: ['ignore', 'pipe', 'inherit'] });
  const peers: Peer[] = [];
  const waiters: ((p: Peer) => void)[] = [];
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`recording echo on ${host} exited (${code}) before listening`)));
    readline.createInterface({ input: child.stdout! }).on('line', (line) => {
      const msg = JSON.parse(line) as { port?: number } & Partial<Peer>;
      if (msg.port !== undefined) {
        const nextPeer = () =>
          new Promise<Peer>((res, rej) => {
            if (peers.length) return res(peers.shift()!);
            const t = setTimeout(() => rej(new Error(`no connection reached the backend on ${host}`)), 10_000);
            waiters.push((p) => (clearTimeout(t), res(p)));
          });
        resolve({ port: msg.port, nextPeer, unclaimed: () => peers.slice(), child });
      } else if (msg.remote !== undefined) {
        const peer = { remote: msg.remote, remotePort: msg.remotePort! };
        const w = waiters.shift();
        if (w) w(peer);
        else peers.push(peer);
      }
    });
  });
}

interface Setup {
  topo: Topology;
  dir: string;
  recorders: Record<Family, Recorder>;
  proxy: RunningProxy;
}

const bracket = (host: string) => (host.includes(':') ? `[${host}]` : host);

function proxyConfig(topo: Topology, recorders: Record<Family, Recorder>, cert: { certFile: string; keyFile: string }): string {
  const tables: string[] = [];
  for (const kind of ['transparent', 'plain'] as const) {
    for (const fam of FAMILIES) {
      const a = topo.addrs[fam];
      tables.push(`[[listener]]
name = "${kind}-${fam}"
listen = "${bracket(a.proxyClientSide)}:${PORTS[kind][fam]}"
backend = "${bracket(a.backend)}:${recorders[fam].port}"
cert = ${JSON.stringify(cert.certFile)}
key = ${JSON.stringify(cert.keyFile)}
${kind === 'transparent' ? 'transparent = true\n' : ''}`);
    }
  }
  return `workers = 1\n\n${tables.join('\n')}`;
}

let setupOnce: Promise<Setup> | undefined;
const partial: { topo?: Topology; dir?: string; recorders: Recorder[]; proxy?: RunningProxy } = { recorders: [] };

/** Built on first use, so that a missing `ip` or a missing root fails every test rather than skipping any. */
function setup(): Promise<Setup> {
  setupOnce ??= (async () => {
    const topo = createTopology({ octet: 78 });
    partial.topo = topo;
    const dir = tempDir('transparent-proxy');
    partial.dir = dir;
    const cert = await issue(dir, { cn: 'transparent.test', dns: ['transparent.test'] });
    const v4 = await startRecorder(topo, topo.addrs.v4.backend);
    partial.recorders.push(v4);
    const v6 = await startRecorder(topo, topo.addrs.v6.backend);
    partial.recorders.push(v6);
    const recorders = { v4, v6 };
    const proxy = await startProxyProcess({
      backendPort: 0,
      noListenFlags: true,
      config: proxyConfig(topo, recorders, cert),
      args: ['--ktls', 'off'],
      wrap: ['ip', 'netns', 'exec', topo.names.proxy],
    });
    partial.proxy = proxy;
    assert.deepEqual(proxy.ports, [PORTS.transparent.v4, PORTS.transparent.v6, PORTS.plain.v4, PORTS.plain.v6]);
    return { topo, dir, recorders, proxy };
  })();
  return setupOnce;
}

/** Every client started, so that `after` can end the ones a failed test left open. */
const clients = new Set<ChildProcess>();

after(async () => {
  await setupOnce?.catch(() => undefined);
  for (const c of clients) c.kill('SIGKILL');
  await partial.proxy?.stop();
  for (const r of partial.recorders) {
    r.child.removeAllListeners('exit');
    r.child.kill();
  }
  partial.topo?.destroy();
  if (partial.dir) fs.rmSync(partial.dir, { recursive: true, force: true });
});

interface ClientEvent {
  event: 'connected' | 'round' | 'done' | 'error';
  local?: { host: string; port: number };
  round?: number;
  bytes?: number;
  sent?: number;
  received?: number;
  rounds?: number;
  message?: string;
}

/** A tls-echo-client running in the client namespace, driven over its stdin. */
interface Client {
  /** The next line it prints; fails on an error line, on another event than `event`, or when it exits first. */
  next(event: ClientEvent['event']): Promise<ClientEvent>;
  /** Asks for one more round. */
  more(): void;
  /** Ends the connection; resolves with the final line once the client exited 0. */
  finish(): Promise<ClientEvent>;
}

function startClient(topo: Topology, host: string, port: number): Client {
  const child = topo.spawnIn('client', process.execPath, [clientScript, host, String(port), String(ROUND)], { stdio: ['pipe', 'pipe', 'pipe'] });
  clients.add(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d));
  const events: ClientEvent[] = [];
  const waiters: (() => void)[] = [];
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) =>
    child.once('close', (code) => {
      clients.delete(child);
      exitCode = code;
      for (const w of waiters.splice(0)) w();
      resolve(code);
    }),
  );
  readline.createInterface({ input: child.stdout! }).on('line', (line) => {
    events.push(JSON.parse(line) as ClientEvent);
    for (const w of waiters.splice(0)) w();
  });
  const describe = () => `client to ${host}:${port} (exit ${exitCode}, stderr: ${stderr.trim() || 'none'})`;
  const next = (event: ClientEvent['event']) =>
    new Promise<ClientEvent>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${describe()}: no "${event}" line within 30 s`)), 30_000);
      const check = () => {
        const e = events.shift();
        if (e) {
          clearTimeout(t);
          if (e.event !== event) return reject(new Error(`${describe()}: expected "${event}", got ${JSON.stringify(e)}`));
          return resolve(e);
        }
        if (exitCode !== undefined) {
          clearTimeout(t);
          return reject(new Error(`${describe()}: exited before "${event}"`));
        }
        waiters.push(check);
      };
      check();
    });
  return {
    next,
    more: () => child.stdin!.write('\n'),
    async finish() {
      child.stdin!.end();
      const done = await next('done');
      assert.equal(await exited, 0, describe());
      return done;
    },
  };
}

/** Connects, runs the first round and checks it; returns the client and its local endpoint. */
async function connectAndEcho(s: Setup, fam: Family, kind: Kind): Promise<{ client: Client; local: { host: string; port: number } }> {
  const client = startClient(s.topo, s.topo.addrs[fam].proxyClientSide, PORTS[kind][fam]);
  const connected = await client.next('connected');
  assert.equal(connected.local?.host, s.topo.addrs[fam].client, 'the client connects from its own namespace address');
  const round = await client.next('round');
  assert.deepEqual([round.sent, round.received], [ROUND, ROUND], `${fam}: ${ROUND} bytes sent and echoed exactly`);
  return { client, local: connected.local };
}

const endpoint = (host: string, port: number) => `${bracket(host)}:${port}`;

async function upgradeCli(proxy: RunningProxy): Promise<{ ok: boolean; pid: number; generation: number; moved?: number; error?: string }> {
  try {
    const { stdout } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket, '--timeout', '120']);
    return JSON.parse(stdout) as { ok: boolean; pid: number; generation: number; moved?: number };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    throw new Error(`ironsocket upgrade exited ${err.code}: ${err.stdout} ${err.stderr}`);
  }
}

test("with transparent = true the backend sees the TLS client's own address, and every byte comes back", async () => {
  const s = await setup();
  for (const fam of FAMILIES) {
    const { client, local } = await connectAndEcho(s, fam, 'transparent');
    const peer = await s.recorders[fam].nextPeer();
    assert.equal(peer.remote, s.topo.addrs[fam].client, `${fam}: the backend is connected from the TLS client's address`);
    // While it is open, status lists the connection under the client's own endpoint.
    let conn: Awaited<ReturnType<RunningProxy['status']>>['connections'][number] | undefined;
    await eventually(
      async () => {
        conn = (await s.proxy.status()).connections.find((c) => c.client === endpoint(local.host, local.port));
        return conn !== undefined && conn.bytesIn === ROUND && conn.bytesOut === ROUND;
      },
      10_000,
      `${fam}: status to list ${endpoint(local.host, local.port)} with ${ROUND} bytes each way (last seen: ${JSON.stringify(conn)})`,
    );
    assert.equal(conn!.listener, `transparent-${fam}`);
    assert.equal(conn!.backend, endpoint(s.topo.addrs[fam].backend, s.recorders[fam].port));
    // A second round on the same connection: the pattern continues and is echoed exactly.
    client.more();
    const second = await client.next('round');
    assert.deepEqual([second.sent, second.received], [2 * ROUND, 2 * ROUND]);
    const done = await client.finish();
    assert.deepEqual([done.sent, done.received, done.rounds], [2 * ROUND, 2 * ROUND, 2]);
  }
  for (const fam of FAMILIES) assert.deepEqual(s.recorders[fam].unclaimed(), [], `${fam}: one backend connection per client connection`);
});

test("without transparent the backend sees the proxy's own address", async () => {
  const s = await setup();
  for (const fam of FAMILIES) {
    const { client } = await connectAndEcho(s, fam, 'plain');
    const peer = await s.recorders[fam].nextPeer();
    assert.equal(peer.remote, s.topo.addrs[fam].proxyBackendSide, `${fam}: the backend is connected from the proxy's backend-side address`);
    const done = await client.finish();
    assert.deepEqual([done.sent, done.received], [ROUND, ROUND]);
  }
});

test('transparent mode survives an in-place upgrade: a connection opened before it keeps flowing and new ones are still transparent', async () => {
  const s = await setup();
  const before = await s.proxy.status();
  const old: Partial<Record<Family, Client>> = {};
  for (const fam of FAMILIES) {
    old[fam] = (await connectAndEcho(s, fam, 'transparent')).client;
    assert.equal((await s.recorders[fam].nextPeer()).remote, s.topo.addrs[fam].client);
  }

  const outcome = await upgradeCli(s.proxy);
  assert.equal(outcome.ok, true, outcome.error);
  assert.equal(outcome.pid, s.proxy.pid, 'the upgrade execs in place: same PID');
  assert.equal(outcome.generation, (before.generation ?? 1) + 1);
  assert.equal(outcome.moved, 2, 'both open connections were carried across exec');

  // The connections opened before the upgrade keep flowing, byte-exact, over the same backend connections.
  for (const fam of FAMILIES) {
    for (let k = 2; k <= 3; k++) {
      old[fam]!.more();
      const r = await old[fam]!.next('round');
      assert.deepEqual([r.round, r.sent, r.received], [k, k * ROUND, k * ROUND], `${fam}: round ${k} after the upgrade`);
    }
  }

  // New connections after the upgrade: still transparent, and the plain listeners still plain.
  for (const fam of FAMILIES) {
    const fresh = await connectAndEcho(s, fam, 'transparent');
    assert.equal((await s.recorders[fam].nextPeer()).remote, s.topo.addrs[fam].client, `${fam}: a new connection after the upgrade is transparent`);
    const plain = await connectAndEcho(s, fam, 'plain');
    assert.equal((await s.recorders[fam].nextPeer()).remote, s.topo.addrs[fam].proxyBackendSide, `${fam}: a plain listener stays plain`);
    await fresh.client.finish();
    await plain.client.finish();
  }

  for (const fam of FAMILIES) {
    const done = await old[fam]!.finish();
    assert.deepEqual([done.sent, done.received, done.rounds], [3 * ROUND, 3 * ROUND, 3]);
    assert.deepEqual(s.recorders[fam].unclaimed(), [], `${fam}: the carried connections never reconnected to the backend`);
  }
  const status = await s.proxy.status();
  assert.equal(status.pid, s.proxy.pid);
  assert.equal(status.generation, (before.generation ?? 1) + 1);
});
