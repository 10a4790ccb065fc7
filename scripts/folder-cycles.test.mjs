// The folder-cycle check behind `npm run lint`: finds a cycle between top-level folders of src/, and leaves tests out.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { folderCycles, folderGraph, folderOf } from './folder-cycles.mjs';

const mod = (source, ...deps) => ({ source, dependencies: deps.map((resolved) => ({ resolved })) });

test('a cycle through three folders is one cycle; imports within a folder and to packages are not edges', () => {
  const modules = [
    mod('src/a/x.ts', 'src/b/y.ts', 'src/a/z.ts', 'node_modules/pino/index.js'),
    mod('src/b/y.ts', 'src/c/w.ts'),
    mod('src/c/w.ts', 'src/a/z.ts'),
    mod('src/d/v.ts', 'src/a/x.ts'),
  ];
  assert.deepEqual(folderCycles(folderGraph(modules)), [['a', 'b', 'c']]);
});

test('no cycle in a layered graph', () => {
  const modules = [mod('src/top/x.ts', 'src/mid/y.ts', 'src/core/z.ts'), mod('src/mid/y.ts', 'src/core/z.ts'), mod('src/core/z.ts')];
  assert.deepEqual(folderCycles(folderGraph(modules)), []);
});

test('tests and the test kit sit above everything: their imports make no folder edge', () => {
  assert.equal(folderOf('src/relay/streams.scenarios.ts'), null);
  assert.equal(folderOf('src/relay/pair.test.ts'), null);
  assert.equal(folderOf('src/kernel/probe.ktls-test.ts'), null);
  assert.equal(folderOf('src/testkit/backends.ts'), null);
  assert.equal(folderOf('src/relay/pair.ts'), 'relay');
  const modules = [mod('src/relay/pair.test.ts', 'src/testkit/backends.ts'), mod('src/testkit/backends.ts', 'src/relay/pair.ts'), mod('src/relay/pair.ts')];
  assert.deepEqual(folderCycles(folderGraph(modules)), []);
});
