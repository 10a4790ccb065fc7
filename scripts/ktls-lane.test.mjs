// The kTLS lane runner fails, never skips, when its guest cannot boot: with the guest's last console lines, or a boot timeout, or a refused --kernel.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const LANE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'ktls-lane.mjs');
const scratch = mkdtempSync(path.join(os.tmpdir(), 'ktls-lane-test-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

/** A stand-in for a UML kernel: a script that prints what a kernel's console would, then does what `body` says. */
function fakeKernel(name, body) {
  const p = path.join(scratch, name);
  writeFileSync(p, `#!/bin/sh\n${body}\n`);
  chmodSync(p, 0o755);
  return p;
}

function lane(args, env) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [LANE, ...args], {
      env: { ...process.env, IRONSOCKET_KTLS_FORCE_UML: '1', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (b) => (out += b));
    child.stderr.on('data', (b) => (out += b));
    child.on('close', (code, signal) => resolve({ code, signal, out }));
  });
}

const testFile = path.join(path.dirname(LANE), 'ktls-lane.test.mjs');

test('a guest kernel that panics at boot fails the lane with its last console lines', async () => {
  const lines = Array.from({ length: 60 }, (_, i) => `console line ${i + 1}`);
  const kernel = fakeKernel(
    'panics',
    `${lines.map((l) => `echo '${l}'`).join('\n')}
echo 'userspace - ptrace set fp regs failed, errno = 14'
echo 'Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b'
exit 1`,
  );
  const r = await lane([testFile], { IRONSOCKET_UML: kernel });
  assert.equal(r.code, 1, r.out);
  assert.match(r.out, /FAIL: the guest did not boot \(UML exit code 1/);
  assert.match(r.out, /the guest's last 40 console lines:/);
  assert.match(r.out, /\| Kernel panic - not syncing: Attempted to kill init!/);
  assert.match(r.out, /\| userspace - ptrace set fp regs failed, errno = 14/);
  assert.match(r.out, /\| console line 60\n/);
  assert.doesNotMatch(r.out, /\| console line 20\n/, 'only the last 40 lines are repeated');
  assert.doesNotMatch(r.out, /skip/i);
});

test('a guest that hangs before its init fails the lane once the boot timeout passes', async () => {
  const kernel = fakeKernel('hangs', `echo 'Linux version 6.12 (fake)'\nexec sleep 300`);
  const started = Date.now();
  const r = await lane([testFile], { IRONSOCKET_UML: kernel, IRONSOCKET_UML_BOOT_TIMEOUT_S: '2' });
  assert.equal(r.code, 124, r.out);
  assert.match(r.out, /FAIL: the guest did not boot within 2 s/);
  assert.match(r.out, /\| Linux version 6\.12 \(fake\)/);
  assert.ok(Date.now() - started < 60_000, 'the hung guest is killed, not waited for');
});

test('a guest whose init reports no exit code fails the lane (a crash after boot is not a pass)', async () => {
  const kernel = fakeKernel('dies', `echo 'ktls-lane(guest): kernel 6.12.0 (fake); tls_stat: TlsCurrTxSw 0'\necho 'Segmentation fault'\nexit 0`);
  const r = await lane([testFile], { IRONSOCKET_UML: kernel });
  assert.equal(r.code, 1, r.out);
  assert.match(r.out, /FAIL: the guest never reported the exit code of what it ran/);
  assert.match(r.out, /\| Segmentation fault/);
});

test('--kernel accepts only the series this tree builds', async () => {
  const r = await lane(['--kernel', '5.15', testFile], {});
  assert.equal(r.code, 1, r.out);
  assert.match(r.out, /FAIL: --kernel 5\.15: this tree builds 6\.1 and 6\.12/);
});

test('--except leaves out only a file of the default set, and refuses anything else before booting a guest', async () => {
  const kernel = fakeKernel('never-booted', `echo 'booted although the arguments were wrong'\nexit 1`);
  const unknown = await lane(['--except', 'dist/no-such.ktls-test.js'], { IRONSOCKET_UML: kernel });
  assert.equal(unknown.code, 1, unknown.out);
  assert.match(unknown.out, /--except dist\/no-such\.ktls-test\.js: not a kTLS-lane test file/);
  const beside = await lane(['--except', 'dist/carry/bridge-window.ktls-test.js', testFile], { IRONSOCKET_UML: kernel });
  assert.equal(beside.code, 1, beside.out);
  assert.match(beside.out, /--except applies to the default set only/);
  assert.doesNotMatch(unknown.out + beside.out, /booted although/);
});
