// The UML kernel cache: keyed by Debian source version, patch and config, so a warm machine builds nothing and any change to them builds anew.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { appendFileSync, chmodSync, cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const scratch = mkdtempSync(path.join(os.tmpdir(), 'uml-kernel-test-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

function run(dir, args, env = {}) {
  const r = spawnSync('bash', [path.join(dir, 'build.sh'), ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
  return { status: r.status, stdout: r.stdout.trim(), stderr: r.stderr };
}

function where(dir, series, cache = path.join(scratch, 'cache')) {
  const r = run(dir, ['--where', series], { IRONSOCKET_UML_CACHE: cache });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

function aptVersion(series) {
  const r = spawnSync('apt-cache', ['show', '--no-all-versions', `linux-source-${series}`], { encoding: 'utf8' });
  return /^Version: (.*)$/m.exec(r.stdout)?.[1];
}

/** A copy of scripts/uml-kernel/ to change one input of the key in. */
function copyOfBuildDir(name) {
  const dir = path.join(scratch, name);
  cpSync(HERE, dir, { recursive: true });
  return dir;
}

test('the cache place of each series names its Debian source version and stays the same from run to run', () => {
  for (const series of ['6.1', '6.12']) {
    const p = where(HERE, series);
    assert.equal(where(HERE, series), p);
    const version = aptVersion(series);
    assert.ok(version, `apt knows linux-source-${series}`);
    assert.ok(path.basename(path.dirname(p)).startsWith(`linux-${series}-${version}-`), p);
  }
  assert.notEqual(path.dirname(where(HERE, '6.1')), path.dirname(where(HERE, '6.12')));
});

test('a change to the patch or to the config fragment moves the cache place (a new build)', () => {
  const before = path.basename(path.dirname(where(HERE, '6.12')));
  const patched = copyOfBuildDir('patched');
  appendFileSync(path.join(patched, 'xstate-6.12.patch'), '\n');
  const configured = copyOfBuildDir('configured');
  appendFileSync(path.join(configured, 'ktls.config'), 'CONFIG_VETH=y\n');
  const a = path.basename(path.dirname(where(patched, '6.12')));
  const b = path.basename(path.dirname(where(configured, '6.12')));
  assert.notEqual(a, before);
  assert.notEqual(b, before);
  assert.notEqual(a, b);
  // The other series' patch is not part of this one's key.
  const other = copyOfBuildDir('other');
  appendFileSync(path.join(other, 'xstate-6.1.patch'), '\n');
  assert.equal(path.basename(path.dirname(where(other, '6.12'))), before);
});

test('a warm cache gives the kernels without building, downloading or checking for build tools', () => {
  const cache = path.join(scratch, 'warm');
  const kernels = ['6.12', '6.1'].map((s) => where(HERE, s, cache));
  for (const k of kernels) {
    mkdirSync(path.dirname(k), { recursive: true });
    writeFileSync(k, '#!/bin/sh\necho fake\n');
    chmodSync(k, 0o755);
  }
  // No make, gcc or apt-get download on PATH: a build, a tool check or a download would fail.
  const bin = path.join(scratch, 'bin');
  mkdirSync(bin, { recursive: true });
  for (const tool of ['bash', 'sed', 'head', 'cat', 'sha256sum', 'cut', 'mkdir', 'mktemp', 'rm', 'seq', 'id', 'apt-cache', 'ls', 'tr', 'dirname', 'grep']) {
    const found = spawnSync('bash', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).stdout.trim();
    if (found) spawnSync('ln', ['-sf', found, path.join(bin, tool)]);
  }
  const r = run(HERE, ['6.12', '6.1'], { IRONSOCKET_UML_CACHE: cache, PATH: bin });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(r.stdout.split('\n'), kernels);
  assert.doesNotMatch(r.stderr, /building|installing/);
});

test('a series without a patch here is refused, naming the ones there are', () => {
  const r = run(HERE, ['5.15'], { IRONSOCKET_UML_CACHE: path.join(scratch, 'cache') });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /no patch for Linux 5\.15 here .*known: 6\.1 6\.12/);
});
