// The SNI table: which context a name gets, and that every context given to it can be found again to be freed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CertSelector } from './sni.js';

test('names go to the first entry that serves them, one-label wildcards after exact names, else the fallback', () => {
  const s = new CertSelector(
    [
      { names: ['a.test', '*.wild.test'], context: 'A' },
      { names: ['A.TEST.', 'b.test'], context: 'B' },
    ],
    'D',
  );
  assert.equal(s.select('a.test.'), 'A');
  assert.equal(s.select('B.test'), 'B');
  assert.equal(s.select('x.wild.test'), 'A');
  assert.equal(s.select('y.x.wild.test'), 'D');
  assert.equal(s.select(undefined), 'D');
});

test('contexts() lists every context once, also one whose names all went to an earlier entry', () => {
  const s = new CertSelector(
    [
      { names: ['a.test', 'b.test'], context: 'A' },
      { names: ['a.test'], context: 'shadowed' },
    ],
    'A',
  );
  assert.deepEqual(s.contexts(), ['A', 'shadowed']);
});
