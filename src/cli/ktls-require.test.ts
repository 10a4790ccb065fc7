// `--ktls require` refuses to start on a kernel without kTLS, naming the failed check and `modprobe tls`.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { readTlsStat } from '../kernel/probe.js';
import { CLI, tempDir } from '../testkit/proxy-process.js';

test('ironsocket run --ktls require exits non-zero on a kernel without kTLS and says which check failed and to modprobe tls', () => {
  assert.equal(readTlsStat(), undefined, 'this native test expects a kernel without kernel TLS (the kTLS lane covers the other case)');
  const dir = tempDir('require');
  const r = spawnSync(process.execPath, [CLI, 'run', '--ktls', 'require', '--listen', '127.0.0.1:0', '--admin-socket', path.join(dir, 'a.sock')], {
    env: { ...process.env, IRONSOCKET_STATE_DIR: path.join(dir, 'state') },
    encoding: 'utf8',
    timeout: 30_000,
  });
  assert.notEqual(r.status, 0);
  assert.equal(r.signal, null);
  assert.match(r.stderr, /--ktls require/);
  assert.match(r.stderr, /setsockopt\(TCP_ULP, "tls"\): ENOENT/);
  assert.match(r.stderr, /modprobe tls/);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
});
