// Upgrade edge cases: clients connecting throughout, a half-closed connection in flight, and no secret left in environ, argv or on disk.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { after, before, test } from 'node:test';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { KeylogCollector } from '../handshake/keylog.js';
import { modeArgs, type Mode } from '../scenarios/real-clients.scenarios.js';
import { deriveDirectionKeys } from '../record/keys.js';
import { suiteByName } from '../record/suites.js';
import { echoBackend, halfCloseBackend, streamChunk, type Backend } from '../testkit/backends.js';
import { CLI, startProxyProcess, type RunningProxy } from '../testkit/proxy-process.js';
import { assertLaneKernel } from '../testkit/lane.js';

const run = promisify(execFile);

async function upgradeOk(proxy: RunningProxy): Promise<void> {
  const { stdout } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket, '--timeout', '300']);
  const o = JSON.parse(stdout) as { ok: boolean; pid: number };
  assert.equal(o.ok, true);
  assert.equal(o.pid, proxy.pid);
}

/** One short-lived connection: handshake, 1 KiB echoed back exactly, close. */
function oneShot(port: number, n: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const payload = streamChunk(`oneshot-${n}`, 0, 1024);
    const s = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false });
    const got: Buffer[] = [];
    let len = 0;
    s.on('secureConnect', () => s.write(payload));
    s.on('data', (d: Buffer) => {
      got.push(d);
      len += d.length;
      if (len >= payload.length) {
        s.destroy();
        Buffer.concat(got).equals(payload) ? resolve() : reject(new Error(`connection ${n}: echoed bytes differ`));
      }
    });
    s.on('error', (e) => reject(new Error(`connection ${n}: ${e.message}`)));
  });
}

export function upgradeEdgeScenarios(mode: Mode): void {
  let echo: Backend;
  let proxy: RunningProxy;
  before(async () => {
    assertLaneKernel(mode);
    echo = await echoBackend();
    proxy = await startProxyProcess({ backendPort: echo.port, args: modeArgs(mode) });
  });
  after(async () => {
    await proxy?.stop();
    await echo?.close();
  });

  test(`a client opening new connections continuously across 3 upgrades sees none refused or reset (${mode} mode)`, async () => {
    let stop = false;
    let ok = 0;
    const failures: string[] = [];
    const loop = (async () => {
      for (let n = 0; !stop; n++) {
        await oneShot(proxy.port, n).then(
          () => ok++,
          (e: Error) => failures.push(e.message),
        );
      }
    })();
    try {
      for (let k = 0; k < 3; k++) {
        const before = ok;
        await upgradeOk(proxy);
        const deadline = Date.now() + 30_000;
        while (ok < before + 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      }
    } finally {
      stop = true;
      await loop;
    }
    assert.deepEqual(failures, []);
    assert.ok(ok >= 9, `only ${ok} connections completed`);
  });

  test(`a connection half-closed by the client before an upgrade still gets all the backend sends after it (${mode} mode)`, async () => {
    // A backend that, once the client's side ends, sends 20 chunks, then 20 more once the upgrade is done, then ends.
    const chunks = 40;
    let upgraded!: () => void;
    const afterUpgrade = new Promise<void>((r) => (upgraded = r));
    const server = await halfCloseBackend('half', chunks, afterUpgrade);
    const p = await startProxyProcess({ backendPort: server.port, args: modeArgs(mode) });
    try {
      const received = await new Promise<Buffer>((resolve, reject) => {
        const s = tls.connect({ port: p.port, host: '127.0.0.1', rejectUnauthorized: false, allowHalfOpen: true } as tls.ConnectionOptions, () =>
          s.write('hello'),
        );
        const got: Buffer[] = [];
        s.once('data', () => {
          // The relay is running (the backend answered): now close_notify + FIN, and the proxy half-closes the backend.
          s.end();
          setTimeout(() => void upgradeOk(p).then(upgraded, reject), 300);
          s.on('data', (d: Buffer) => got.push(d));
        });
        s.on('end', () => resolve(Buffer.concat(got)));
        s.on('error', (e) =>
          setTimeout(
            () =>
              reject(
                new Error(
                  `${e.message} after ${got.reduce((n, b) => n + b.length, 0)} bytes; proxy said: ${p
                    .logs()
                    .slice(-8)
                    .map((l) => (JSON.parse(l) as { msg: string }).msg)
                    .join(' | ')}`,
                ),
              ),
            1000,
          ),
        );
      });
      assert.equal(received.length, chunks * 4096);
      assert.ok(received.equals(streamChunk('half', 0, chunks * 4096)), 'bytes differ');
      assert.equal((await p.status()).generation, 2, 'the upgrade happened while the connection was half-closed');
      const est = p.logs().find((l) => l.includes('"msg":"established"'));
      assert.match(est ?? '', new RegExp(`"mode":"${mode}"`));
    } finally {
      await p.stop();
      server.close();
    }
  });

  test(`after an upgrade no key material is in /proc/<pid>/environ or cmdline and no hand-off file is on disk (${mode} mode)`, async () => {
    const keylog = new KeylogCollector();
    const lines: Buffer[] = [];
    const dirs = [os.tmpdir(), process.cwd(), '/dev/shm'];
    const listing = () => new Set(dirs.flatMap((d) => fs.readdirSync(d).map((f) => `${d}/${f}`)));
    const before = listing();
    const s = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const c = tls.connect({ port: proxy.port, host: '127.0.0.1', rejectUnauthorized: false, maxVersion: 'TLSv1.3' });
      c.on('keylog', (l: Buffer) => lines.push(Buffer.from(l)));
      c.once('secureConnect', () => resolve(c));
      c.once('error', reject);
    });
    try {
      s.write('x');
      await new Promise((r) => s.once('data', r));
      for (const l of lines) keylog.add(Buffer.from(l));
      const suite = suiteByName(s.getCipher().name, 'TLSv1.3')!;
      const keys = deriveDirectionKeys(suite, {
        version: 'TLSv1.3',
        clientTrafficSecret: keylog.clientTrafficSecret0!,
        serverTrafficSecret: keylog.serverTrafficSecret0!,
      });
      const secrets = [keylog.clientTrafficSecret0!, keylog.serverTrafficSecret0!, keys.rx.key, keys.tx.key, keys.rx.iv, keys.tx.iv].map((b) => Buffer.from(b));
      await upgradeOk(proxy);
      s.write('y');
      await new Promise((r) => s.once('data', r));
      for (const file of ['environ', 'cmdline']) {
        const content = fs.readFileSync(`/proc/${proxy.pid}/${file}`);
        for (const sec of secrets) {
          assert.equal(content.indexOf(sec), -1, `${file} contains raw key material`);
          assert.equal(content.indexOf(Buffer.from(sec.toString('hex'))), -1, `${file} contains hex key material`);
          assert.equal(content.indexOf(Buffer.from(sec.toString('base64'))), -1, `${file} contains base64 key material`);
        }
      }
      const added = [...listing()].filter((f) => !before.has(f) && !/ironsocket-(proxy|clients|limits)-/.test(f));
      assert.deepEqual(added, [], 'files appeared during the upgrade');
      const fds = fs.readdirSync(`/proc/${proxy.pid}/fd`).map((fd) => {
        try {
          return fs.readlinkSync(`/proc/${proxy.pid}/fd/${fd}`);
        } catch {
          return '';
        }
      });
      assert.ok(!fds.some((l) => l.includes('memfd:ironsocket-handoff')), 'the hand-off memfd was closed after restore');
    } finally {
      s.destroy();
      keylog.wipe();
    }
  });
}
