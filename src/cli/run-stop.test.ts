// `ironsocket run` stops within a bound on SIGTERM whatever state start-up reached: a lost port race, workers still starting.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { makeCert, tempDir } from '../testkit/proxy-process.js';

const MAIN = fileURLToPath(new URL('./main.js', import.meta.url));
/** How long a run may take to be gone after SIGTERM (or after failing on its own). */
const BOUND_MS = 5000;
/** SIGTERM this long after the spawn: before Node has loaded, while the config is read, while workers start, after. */
const DELAYS_MS = [0, 60, 150, 300, 500, 800, 1200];

let dir: string;
let cert: { certFile: string; keyFile: string };
let taken: net.Server;
let takenPort: number;
let backend: net.Server;

const listen = async (s: net.Server) => {
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  return (s.address() as net.AddressInfo).port;
};

before(async () => {
  dir = tempDir('run-stop');
  cert = await makeCert(dir, 'ec');
  taken = net.createServer();
  takenPort = await listen(taken); // the port race, lost: someone else holds it
  backend = net.createServer((s) => s.destroy());
  await listen(backend);
});
after(() => {
  taken.close();
  backend.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const listener = (port: number) =>
  `[[listener]]\nlisten = "127.0.0.1:${port}"\nbackend = "127.0.0.1:${(backend.address() as net.AddressInfo).port}"\n` +
  `cert = ${JSON.stringify(cert.certFile)}\nkey = ${JSON.stringify(cert.keyFile)}\n`;

interface Ended {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** From SIGTERM (or the spawn, without one) to the exit; undefined when it hung and was SIGKILLed. */
  ms?: number;
  pid: number;
  stderr: string;
}

interface RunOptions {
  /** SIGTERM once this resolves (given the pid and the log so far); without it, no signal. */
  when?: (pid: number, log: () => string) => Promise<void>;
  /** Sent `gapMs` after SIGTERM: the operator insisting. */
  then?: { signal: NodeJS.Signals; gapMs: number };
  args?: string[];
}

/** Runs `ironsocket run` with the listeners given as TOML, signals it as `opts` says, and waits up to BOUND_MS for the exit. */
async function run(listeners: string, opts: RunOptions = {}): Promise<Ended> {
  const d = fs.mkdtempSync(path.join(dir, 'run-'));
  fs.writeFileSync(path.join(d, 'c.toml'), listeners);
  const args = ['run', '--config', path.join(d, 'c.toml'), '--admin-socket', path.join(d, 'admin.sock'), ...(opts.args ?? [])];
  const child = spawn(process.execPath, [MAIN, ...args], {
    env: { ...process.env, IRONSOCKET_STATE_DIR: path.join(d, 'state') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const pid = child.pid!;
  let stderr = '';
  let stdout = '';
  child.stderr!.on('data', (chunk) => (stderr += chunk));
  child.stdout!.on('data', (chunk) => (stdout += chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  let gone = false;
  void exited.then(() => (gone = true));
  if (!opts.when) await exited;
  else await Promise.race([exited, opts.when(pid, () => stdout)]);
  if (!gone) child.kill('SIGTERM');
  const from = Date.now();
  if (opts.then) {
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, opts.then!.gapMs))]);
    if (!gone) child.kill(opts.then.signal);
  }
  const timeout = new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), BOUND_MS).unref());
  const r = await Promise.race([exited, timeout]);
  if (r === 'hung') {
    const threads = fs.readdirSync(`/proc/${pid}/task`).length;
    child.kill('SIGKILL');
    await exited;
    return { code: null, signal: 'SIGKILL', pid, stderr: `${stderr}\n(hung with ${threads} threads)` };
  }
  return { ...r, ms: Date.now() - from, pid, stderr };
}

const afterMs = (ms: number) => () => new Promise<void>((resolve) => setTimeout(resolve, ms));
/** Resolves once the proxy logged that it is ready. */
const ready = async (_pid: number, log: () => string) => {
  while (!/"msg":"ready"/.test(log())) await new Promise((resolve) => setTimeout(resolve, 10));
};
/** Resolves once the process has at least `n` threads (its workers are starting), polling /proc. */
const threadsAtLeast = (n: number) => async (pid: number) => {
  for (;;) {
    try {
      if (fs.readdirSync(`/proc/${pid}/task`).length >= n) return;
    } catch {
      return; // gone
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
};

function assertStoppedInBound(r: Ended, what: string): void {
  assert.notEqual(r.ms, undefined, `${what}: still running ${BOUND_MS} ms after SIGTERM; stderr:\n${r.stderr}`);
  assert.equal(fs.existsSync(`/proc/${r.pid}`), false, `${what}: its threads are still there`);
}

describe('ironsocket run, stopped during start-up', () => {
  it('exits 1 by itself, naming the port, when the port it must bind is taken, its workers stopped rather than cut off mid-boot', async () => {
    // Node's exit used to terminate handshake workers still loading: now and then koffi threw into the dying thread (FATAL ERROR, SIGABRT).
    for (let i = 0; i < 4; i++) {
      const r = await run(listener(takenPort), { args: ['--workers', '4'] });
      assertStoppedInBound(r, 'no signal');
      assert.equal(r.code, 1, `code ${r.code}, signal ${r.signal}\n${r.stderr}`);
      assert.match(r.stderr, new RegExp(`cannot start: cannot listen on 127\\.0\\.0\\.1:${takenPort}: .*EADDRINUSE`));
      assert.doesNotMatch(r.stderr, /FATAL ERROR/);
    }
  });

  it('is gone within 5 s with a failure status when SIGTERM comes at any moment of a start that lost its port race', async () => {
    for (const ms of DELAYS_MS) {
      const r = await run(listener(takenPort), { when: afterMs(ms) });
      assertStoppedInBound(r, `SIGTERM after ${ms} ms`);
      // Killed by the signal before Node has loaded (nothing to clean up), else status 1: start-up failed.
      assert.ok(r.code === 1 || r.signal === 'SIGTERM', `SIGTERM after ${ms} ms: code ${r.code}, signal ${r.signal}\n${r.stderr}`);
    }
  });

  it('is gone within 5 s with a failure status when only the second listener lost its port race (the first bound, workers starting)', async () => {
    for (const ms of DELAYS_MS) {
      const r = await run(listener(0) + listener(takenPort), { when: afterMs(ms) });
      assertStoppedInBound(r, `SIGTERM after ${ms} ms`);
      assert.ok(r.code === 1 || r.signal === 'SIGTERM', `SIGTERM after ${ms} ms: code ${r.code}, signal ${r.signal}\n${r.stderr}`);
    }
  });

  it('hears a SIGTERM that comes while its workers start, and stops once start-up has ended', async () => {
    // More threads than Node starts with: the worker threads are being created, start-up is well under way.
    const r = await run(listener(0), { when: threadsAtLeast(16), args: ['--workers', '4'] });
    assertStoppedInBound(r, 'SIGTERM while workers start');
    assert.equal(r.signal, null, `killed by ${r.signal}: the signal went unheard\n${r.stderr}`);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /SIGTERM during start-up: stopping once start-up has ended/);
  });
});

describe('ironsocket run, stopped by SIGTERM and then SIGINT', () => {
  it("is gone within 5 s when the second signal comes while it stops (Node's exit once hung there, deaf to signals)", async () => {
    for (const gapMs of [0, 5, 30]) {
      const r = await run(listener(0), { when: ready, then: { signal: 'SIGINT', gapMs } });
      assertStoppedInBound(r, `SIGINT ${gapMs} ms after SIGTERM`);
      assert.equal(r.signal, null, r.stderr);
      // Either the graceful stop had finished (0), or the second signal cut it short (1).
      assert.ok(r.code === 0 || r.code === 1, `code ${r.code}\n${r.stderr}`);
    }
  });

  it('is gone within 5 s of SIGTERM and SIGINT while clients are still in their handshake', async () => {
    let port = 0;
    const clients: net.Socket[] = [];
    const withClients = async (pid: number, log: () => string) => {
      await ready(pid, log);
      port = Number(/"listen":"127\.0\.0\.1:(\d+)"/.exec(log())![1]);
      // Connected, silent: each handshake worker watches its client on the pool for a ClientHello that never comes.
      for (let i = 0; i < 4; i++) clients.push(net.connect(port, '127.0.0.1').on('error', () => {}));
      await new Promise((resolve) => setTimeout(resolve, 300));
    };
    try {
      const r = await run(listener(0), { when: withClients, then: { signal: 'SIGINT', gapMs: 20 } });
      assertStoppedInBound(r, 'SIGINT 20 ms after SIGTERM, clients in handshake');
      assert.equal(r.signal, null, r.stderr);
    } finally {
      for (const c of clients) c.destroy();
    }
  });
});
