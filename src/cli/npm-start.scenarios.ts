// `npm start` with no arguments: listens on 127.0.0.1:8443 with a generated certificate and serves a curl request to 127.0.0.1:8080.
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { httpBackend } from '../testkit/backends.js';
import { ROOT, eventually, tempDir } from '../testkit/proxy-process.js';

const run = promisify(execFile);

export function npmStartScenario(expectMode: 'kernel' | 'user'): void {
  test(`npm start with no arguments serves curl end to end to 127.0.0.1:8080 in ${expectMode} mode`, async () => {
    const body = crypto.randomBytes(100_000);
    const backend = await httpBackend(body, 8080).catch((e: Error) => {
      throw new Error(`this test needs 127.0.0.1:8080 free for the default backend: ${e.message}`);
    });
    const dir = tempDir('npm-start');
    const child = spawn('npm', ['start', '--silent'], {
      cwd: ROOT,
      detached: true,
      env: { ...process.env, IRONSOCKET_STATE_DIR: path.join(dir, 'state'), XDG_RUNTIME_DIR: path.join(dir, 'run') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    let stdout = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d));
    child.stdout!.on('data', (d: Buffer) => (stdout += d));
    try {
      // The banner's last line: a pipe may deliver it in pieces, so wait for the whole of it.
      await eventually(() => /ironsocket help run lists every option/.test(stderr), 60_000, `the banner (stderr so far: ${stderr})`);
      assert.match(stderr, /listening on\s+127\.0\.0\.1:8443/);
      assert.match(stderr, /forwarding to\s+127\.0\.0\.1:8080/);
      assert.match(stderr, /to change:/);
      const { stdout: got } = await run('curl', ['-sk', '--fail', 'https://127.0.0.1:8443/'], { encoding: 'buffer', maxBuffer: 1 << 20 });
      assert.ok(got.equals(body), 'curl got different bytes');
      assert.ok(
        stdout.split('\n').some((l) => l.includes('"established"') && l.includes(`"mode":"${expectMode}"`)),
        stdout,
      );
      const keyFile = path.join(dir, 'state', 'localhost', 'key.pem');
      assert.equal(fs.statSync(keyFile).mode & 0o777, 0o600, 'the generated key is kept 0600');
    } finally {
      process.kill(-child.pid!, 'SIGTERM');
      await new Promise((r) => child.once('exit', r));
      await backend.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}
