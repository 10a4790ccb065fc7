// The lane-file generator: two files per listed scenarios file, byte-for-byte calls; a list out of step with the scenarios files fails the build.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { scenarioNames, writeLaneTests } from './lane-tests.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const LANES_JS = path.join(ROOT, 'dist/testkit/lanes.js');

/** A dist/ with the compiled list and an empty scenarios module per listed name (plus `extra`). */
async function fakeDist(extra = []) {
  const dir = mkdtempSync(path.join(tmpdir(), 'lane-tests-'));
  mkdirSync(path.join(dir, 'testkit'));
  cpSync(LANES_JS, path.join(dir, 'testkit/lanes.js'));
  const { LANES } = await import(LANES_JS);
  for (const name of [...LANES.map((e) => e.name), ...extra]) {
    mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    writeFileSync(path.join(dir, `${name}.scenarios.js`), '');
  }
  return { dir, LANES };
}

test('every listed scenarios file gets a .test.js and a .ktls-test.js calling its function with the lane mode', async () => {
  const { dir, LANES } = await fakeDist();
  try {
    const written = await writeLaneTests(dir);
    assert.equal(written.length, 2 * LANES.length);
    const upgrade = readFileSync(path.join(dir, 'carry/upgrade.ktls-test.js'), 'utf8');
    assert.match(upgrade, /^import \{ upgradeScenarios \} from '\.\/upgrade\.scenarios\.js';$/m);
    assert.match(upgrade, /^upgradeScenarios\("kernel", \{"chunk":1024,"everyMs":100\}\);$/m);
    const real = readFileSync(path.join(dir, 'scenarios/real-clients.test.js'), 'utf8');
    assert.match(real, /^describe\("--ktls auto on a kernel without kTLS", \(\) => realClientScenarios\("user", "auto"\)\);$/m);
    assert.ok(existsSync(path.join(dir, 'relay/streams.test.js')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a scenarios file the list leaves out, or a lane file already there, fails', async () => {
  const a = await fakeDist(['relay/new-thing']);
  try {
    await assert.rejects(writeLaneTests(a.dir), /not listed \[relay\/new-thing\]/);
  } finally {
    rmSync(a.dir, { recursive: true, force: true });
  }
  const b = await fakeDist();
  try {
    writeFileSync(path.join(b.dir, 'relay/streams.test.js'), '');
    await assert.rejects(writeLaneTests(b.dir), /is generated, not written in src/);
  } finally {
    rmSync(b.dir, { recursive: true, force: true });
  }
});

test('the list matches src/: each name has a scenarios file exporting its function, and no hand-written lane file', async () => {
  const { LANES } = await import(LANES_JS);
  assert.deepEqual(LANES.map((e) => e.name).sort(), scenarioNames(path.join(ROOT, 'dist')));
  for (const e of LANES) {
    const src = readFileSync(path.join(ROOT, 'src', `${e.name}.scenarios.ts`), 'utf8');
    assert.match(src, new RegExp(`^export function ${e.run}\\(`, 'm'), `${e.name}.scenarios.ts exports ${e.run}`);
    for (const suffix of ['.test.ts', '.ktls-test.ts']) assert.ok(!existsSync(path.join(ROOT, 'src', e.name + suffix)), `src/${e.name}${suffix}`);
    assert.equal(e.user.calls[0].args[0], 'user');
    assert.equal(e.kernel.calls[0].args[0], 'kernel');
  }
});
