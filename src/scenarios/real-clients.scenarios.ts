// Real clients (openssl s_client, curl, node:tls) through `ironsocket run` for every suite; run per lane (src/testkit/lanes.ts).
import { execFile, spawn } from 'node:child_process';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { readTlsStat } from '../kernel/probe.js';
import { echoBackend, exactEchoBackend, httpBackend, streamChunk, type Backend } from '../testkit/backends.js';
import { makeCert, startProxyProcess, tempDir, type RunningProxy } from '../testkit/proxy-process.js';
import { assertLaneKernel } from '../testkit/lane.js';

const run = promisify(execFile);

const SUITES = [
  { name: 'TLS_AES_128_GCM_SHA256', version: 'TLSv1.3', cert: 'ec' },
  { name: 'TLS_AES_256_GCM_SHA384', version: 'TLSv1.3', cert: 'ec' },
  { name: 'TLS_CHACHA20_POLY1305_SHA256', version: 'TLSv1.3', cert: 'ec' },
  { name: 'ECDHE-ECDSA-AES128-GCM-SHA256', version: 'TLSv1.2', cert: 'ec' },
  { name: 'ECDHE-ECDSA-AES256-GCM-SHA384', version: 'TLSv1.2', cert: 'ec' },
  { name: 'ECDHE-ECDSA-CHACHA20-POLY1305', version: 'TLSv1.2', cert: 'ec' },
  { name: 'ECDHE-RSA-AES128-GCM-SHA256', version: 'TLSv1.2', cert: 'rsa' },
  { name: 'ECDHE-RSA-AES256-GCM-SHA384', version: 'TLSv1.2', cert: 'rsa' },
  { name: 'ECDHE-RSA-CHACHA20-POLY1305', version: 'TLSv1.2', cert: 'rsa' },
] as const;

export type Mode = 'kernel' | 'user';
/** `kernel`: --ktls require on a kTLS kernel; `user`: the userspace record layer (--ktls off). */
export const modeArgs = (mode: Mode) => (mode === 'kernel' ? ['--ktls', 'require'] : ['--ktls', 'off']);

/** `policy` overrides the --ktls flag (e.g. 'auto' on a kernel without kTLS, which must end up in `user` mode). */
export function realClientScenarios(mode: Mode, policy?: 'auto'): void {
  const args = () => (policy ? ['--ktls', policy] : modeArgs(mode));
  const dir = tempDir('clients');
  const proxies: Record<'ec' | 'rsa', RunningProxy | undefined> = { ec: undefined, rsa: undefined };
  let echo: Backend;

  before(async () => {
    assertLaneKernel(mode);
    echo = await echoBackend();
    for (const kind of ['ec', 'rsa'] as const) {
      proxies[kind] = await startProxyProcess({ backendPort: echo.port, cert: await makeCert(dir, kind), args: args() });
    }
  });

  after(async () => {
    for (const p of Object.values(proxies)) await p?.stop();
    await echo?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function connect(port: number, suite: (typeof SUITES)[number]): Promise<tls.TLSSocket> {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, minVersion: suite.version, maxVersion: suite.version, ciphers: suite.name });
      s.once('secureConnect', () => resolve(s));
      s.once('error', reject);
    });
  }

  function exchange(s: tls.TLSSocket, data: Buffer): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const got: Buffer[] = [];
      let n = 0;
      const onData = (d: Buffer) => {
        got.push(d);
        n += d.length;
        if (n >= data.length) {
          s.off('data', onData);
          resolve(Buffer.concat(got));
        }
      };
      s.on('data', onData);
      s.once('error', reject);
      s.write(data);
    });
  }

  describe(`every supported suite is carried in ${mode} mode`, () => {
    for (const suite of SUITES) {
      test(`a node:tls client using ${suite.version} ${suite.name} exchanges exact bytes while status shows a ${mode} session`, async () => {
        const p = proxies[suite.cert]!;
        const s = await connect(p.port, suite);
        try {
          assert.equal(s.getCipher().name, suite.name);
          const first = streamChunk(suite.name, 0, 1000);
          assert.deepEqual(await exchange(s, first), first);
          if (mode === 'kernel') {
            const stat = readTlsStat()!;
            assert.ok(stat.TlsCurrTxSw! >= 1, `TlsCurrTxSw ${stat.TlsCurrTxSw}`);
            assert.ok(stat.TlsCurrRxSw! >= 1, `TlsCurrRxSw ${stat.TlsCurrRxSw}`);
          }
          const status = await p.status();
          const mine = status.connections.find((c) => c.cipher === suite.name);
          assert.ok(mine, `status lists the connection: ${JSON.stringify(status.connections)}`);
          assert.equal(mine.mode, mode);
          assert.equal(mine.version, suite.version);
          const big = streamChunk(suite.name, 1000, 300_000);
          assert.ok((await exchange(s, big)).equals(big));
        } finally {
          s.destroy();
        }
      });
    }
  });

  describe('openssl s_client', () => {
    for (const suite of SUITES) {
      test(`openssl s_client with ${suite.version} ${suite.name} gets back exactly what it sent`, async () => {
        const data = streamChunk(`s_client ${suite.name}`, 0, 200_000);
        const backend = await exactEchoBackend(data.length);
        const p = await startProxyProcess({ backendPort: backend.port, cert: await makeCert(dir, suite.cert), args: args() });
        try {
          const args = ['s_client', '-connect', `127.0.0.1:${p.port}`, '-quiet', '-ign_eof'];
          if (suite.version === 'TLSv1.3') args.push('-tls1_3', '-ciphersuites', suite.name);
          else args.push('-tls1_2', '-cipher', suite.name);
          const child = spawn('openssl', args, { stdio: ['pipe', 'pipe', 'pipe'] });
          const out: Buffer[] = [];
          let err = '';
          child.stdout.on('data', (d: Buffer) => out.push(d));
          child.stderr.on('data', (d: Buffer) => (err += d));
          child.stdin.end(data);
          const code = await new Promise<number | null>((r) => child.once('exit', r));
          const got = Buffer.concat(out);
          assert.equal(got.length, data.length, `s_client exit ${code}; stderr: ${err}`);
          assert.ok(got.equals(data), 'bytes differ');
          const est = p.logs().find((l) => l.includes('"msg":"established"'));
          assert.match(est ?? '', new RegExp(`"cipher":"${suite.name}".*"mode":"${mode}"`));
        } finally {
          await p.stop();
          await backend.close();
        }
      });
    }
  });

  describe('curl', () => {
    const body = streamChunk('curl body', 0, 1 << 20);
    const digest = crypto.createHash('sha256').update(body).digest('hex');
    for (const suite of SUITES.filter((s) => s.cert === 'ec')) {
      test(`curl with ${suite.version} ${suite.name} downloads 1 MiB byte-exact through the proxy`, async () => {
        const backend = await httpBackend(body);
        const p = await startProxyProcess({ backendPort: backend.port, cert: await makeCert(dir, 'ec'), args: args() });
        try {
          const args = ['-sk', '--fail', `https://127.0.0.1:${p.port}/`];
          if (suite.version === 'TLSv1.3') args.push('--tlsv1.3', '--tls13-ciphers', suite.name);
          else args.push('--tlsv1.2', '--tls-max', '1.2', '--ciphers', suite.name);
          const { stdout } = await run('curl', args, { encoding: 'buffer', maxBuffer: 4 << 20 });
          assert.equal(crypto.createHash('sha256').update(stdout).digest('hex'), digest);
        } finally {
          await p.stop();
          await backend.close();
        }
      });
    }
  });
}
