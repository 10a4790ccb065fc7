// A listener runtime replaced by a reload keeps its TLS servers until its last connection ends, then frees them once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Retiring } from './retiring.js';

test('a retired runtime is released when its last connection leaves, one without connections at once, each once', () => {
  const released: string[] = [];
  const r = new Retiring<string>((t) => released.push(t));
  const leaveA1 = r.enter('A');
  const leaveA2 = r.enter('A');
  r.retire(['A', 'B']);
  assert.deepEqual(released, ['B'], 'B had no connection: released at once; A waits');
  leaveA1();
  leaveA1();
  assert.deepEqual(released, ['B'], 'one connection of A is still under way (and leaving twice counts once)');
  leaveA2();
  assert.deepEqual(released, ['B', 'A']);
  const leaveC = r.enter('C');
  leaveC();
  assert.deepEqual(released, ['B', 'A'], 'a runtime in service is never released by its connections ending');
});
