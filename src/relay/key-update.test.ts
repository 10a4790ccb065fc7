// TLS 1.3 KeyUpdate from a real client (openssl s_client `k` / `K`) mid-stream in the userspace record layer: data stays exact.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, test } from 'node:test';
import { echoBackend, type Backend } from '../testkit/backends.js';
import { eventually, startProxyProcess, type RunningProxy } from '../testkit/proxy-process.js';

let echo: Backend;
let proxy: RunningProxy;

before(async () => {
  echo = await echoBackend();
  proxy = await startProxyProcess({ backendPort: echo.port, args: ['--ktls', 'off'] });
});

after(async () => {
  await proxy?.stop();
  await echo?.close();
});

for (const suite of ['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256']) {
  test(`s_client KeyUpdate without and with update_requested keeps a ${suite} connection exact`, async () => {
    // Interactive s_client (no -quiet/-ign_eof): a line starting with k/K sends a KeyUpdate instead of data.
    const child = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${proxy.port}`, '-tls1_3', '-ciphersuites', suite], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('latin1')));
    child.stderr.on('data', (d: Buffer) => (err += d.toString('latin1')));
    const exited = new Promise<number | null>((r) => child.once('exit', r));
    const say = async (line: string, expect?: string) => {
      child.stdin.write(line);
      if (expect) await eventually(() => out.includes(expect), 15_000, `echo of ${JSON.stringify(expect)}; stderr: ${err}`);
      else await new Promise((r) => setTimeout(r, 300));
    };
    try {
      await eventually(() => out.includes('Verify return code') || err.includes('Verify return'), 15_000, 'the handshake');
      await say('before-update-0123456789\n', 'before-update-0123456789');
      await say('k\n');
      await say('after-k-abcdefghij\n', 'after-k-abcdefghij');
      await say('K\n');
      await say('after-K-klmnopqrst\n', 'after-K-klmnopqrst');
      await say('k\n');
      await say('K\n');
      await say('x'.repeat(20_000) + '\n', 'x'.repeat(20_000));
      assert.match(err + out, /KEYUPDATE/);
      assert.equal(out.match(/KEYUPDATE/g)?.length ?? err.match(/KEYUPDATE/g)?.length, 4);
      child.stdin.end();
      assert.equal(await exited, 0, `s_client failed: ${err}`);
      const est = proxy.logs().find((l) => l.includes('"msg":"established"') && l.includes(suite));
      const conn = (JSON.parse(est!) as { conn: string }).conn;
      const mine = proxy.logs().filter((l) => l.includes(`"conn":"${conn}"`) && l.includes('KeyUpdate'));
      assert.equal(mine.filter((l) => l.includes('(update_not_requested)')).length, 2, mine.join('\n'));
      assert.equal(mine.filter((l) => l.includes('answered with our KeyUpdate')).length, 2, mine.join('\n'));
      const closed = proxy.logs().filter((l) => l.includes('"msg":"closed'));
      assert.ok(!closed.some((l) => /KeyUpdate|alert|failed/.test(l)), closed.join('\n'));
    } finally {
      child.kill();
    }
  });
}
