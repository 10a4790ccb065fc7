// The upgrade's fault injection is test-only: the shipped CLI ignores IRONSOCKET_FAULT_* and no shipped module reads them.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { echoBackend } from '../testkit/backends.js';
import { CLI, ROOT, startProxyProcess } from '../testkit/proxy-process.js';

const run = promisify(execFile);
// A hold past the CLI's 300 s would make the upgrade time out, were it honoured.
const FAULTS = { IRONSOCKET_FAULT_EXEC_PATH: '/nonexistent/node', IRONSOCKET_FAULT_BRIDGE: 'exit', IRONSOCKET_FAULT_EXEC_HOLD_MS: '400000' };

test('the production entry ignores IRONSOCKET_FAULT_EXEC_PATH, IRONSOCKET_FAULT_BRIDGE and IRONSOCKET_FAULT_EXEC_HOLD_MS: the upgrade execs node at once and its bridge works', async () => {
  const backend = await echoBackend();
  const proxy = await startProxyProcess({ backendPort: backend.port, args: ['--ktls', 'off'], env: FAULTS });
  try {
    const { stdout } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket, '--timeout', '300']);
    const outcome = JSON.parse(stdout) as { ok: boolean; pid: number; generation: number };
    assert.equal(outcome.ok, true, stdout);
    assert.equal(outcome.pid, proxy.pid);
    assert.equal(outcome.generation, 2);
  } finally {
    await proxy.stop();
    await backend.close();
  }
});

test('no shipped module reads an IRONSOCKET_FAULT_ variable (only src/testkit, which tests alone load)', () => {
  const readers: string[] = [];
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (p !== path.join(ROOT, 'dist/testkit')) walk(p);
      } else if (p.endsWith('.js') && !/\.(test|ktls-test|scenarios)\.js$/.test(p) && fs.readFileSync(p, 'utf8').includes('IRONSOCKET_FAULT_')) {
        readers.push(path.relative(ROOT, p));
      }
    }
  };
  walk(path.join(ROOT, 'dist'));
  assert.deepEqual(readers, []);
});
