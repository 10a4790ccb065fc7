// Checks that the Prometheus text parser the metric tests rely on accepts valid exposition text and rejects malformed text.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parsePromText } from './prom-text.js';

const VALID = [
  '# HELP a_total Things that happened, with a \\\\ and a\\nnewline.',
  '# TYPE a_total counter',
  'a_total{kind="quote \\" backslash \\\\ newline \\n",x="1"} 3',
  'a_total{kind="plain",} 1e3 1700000000000',
  '# a plain comment',
  '',
  '# TYPE g gauge',
  'g +Inf',
  'g{k="neg"} -Inf',
  'g{k="nan"} NaN',
  'g{k="dec"} -0.5',
  '# TYPE h histogram',
  'h_bucket{le="1"} 2',
  'h_bucket{le="+Inf"} 3',
  'h_sum 4.5',
  'h_count 3',
  '# TYPE empty gauge',
  '',
].join('\n');

describe('parsePromText', () => {
  it('parses families, escaped label values and special numbers', () => {
    const f = parsePromText(VALID);
    assert.deepEqual([...f.keys()], ['a_total', 'g', 'h', 'empty']);
    assert.equal(f.get('a_total')?.help, 'Things that happened, with a \\ and a\nnewline.');
    assert.deepEqual(f.get('a_total')?.samples, [
      { name: 'a_total', labels: { kind: 'quote " backslash \\ newline \n', x: '1' }, value: 3 },
      { name: 'a_total', labels: { kind: 'plain' }, value: 1000 },
    ]);
    const g = f.get('g')!.samples.map((s) => s.value);
    assert.deepEqual(g.slice(0, 2), [Infinity, -Infinity]);
    assert.ok(Number.isNaN(g[2]));
    assert.equal(g[3], -0.5);
    assert.equal(f.get('h')?.samples.length, 4);
    assert.deepEqual(f.get('empty'), { type: 'gauge', help: undefined, samples: [] });
  });

  it('rejects malformed lines, naming the line', () => {
    const bad: Array<[string, RegExp]> = [
      ['# TYPE a gauge\na 1\na{x="1"} two\n', /line 3: invalid value "two"/],
      ['# TYPE a gauge\na{x="1} 1\n', /line 2: unterminated value of label x/],
      ['# TYPE a gauge\na{x="\\t"} 1\n', /line 2: invalid escape \\t/],
      ['# TYPE a gauge\na{x=1} 1\n', /line 2: expected ="..."/],
      ['# TYPE a gauge\na{x="1" y="2"} 1\n', /line 2: expected , or }/],
      ['# TYPE a gauge\na{x="1",x="2"} 1\n', /line 2: label x appears twice/],
      ['# TYPE a gauge\na{1x="1"} 1\n', /line 2: expected a label name/],
      ['# TYPE a gauge\na 1 2 3\n', /line 2: trailing text/],
      ['# TYPE a gauge\na 1 soon\n', /line 2: invalid timestamp/],
      ['# TYPE a gauge\na\n', /line 2: expected whitespace before the value/],
      ['# TYPE a gauge\n-a 1\n', /line 2: a sample must start with a metric name/],
      ['# TYPE a gauges\n', /line 1: unknown metric type "gauges"/],
      ['# TYPE 1a gauge\n', /line 1: invalid metric name/],
      ['# HELP a bad \\x escape\n', /line 1: invalid escape in HELP/],
      ['# TYPE a gauge\na 1', /line 2: the text must end with a newline/],
    ];
    for (const [text, error] of bad) assert.throws(() => parsePromText(text), error, JSON.stringify(text));
  });

  it('rejects samples outside a declared family, redeclared families and duplicate series', () => {
    assert.throws(() => parsePromText('a 1\n'), /line 1: sample a does not belong to the family declared before it \(none\)/);
    assert.throws(() => parsePromText('# TYPE a gauge\nb 1\n'), /line 2: sample b does not belong/);
    assert.throws(() => parsePromText('# TYPE a gauge\n# TYPE b gauge\na 1\n'), /line 3: sample a does not belong/, 'samples must follow their own TYPE');
    assert.throws(() => parsePromText('# TYPE a counter\na_sum 1\n'), /line 2: sample a_sum does not belong/);
    assert.throws(() => parsePromText('# TYPE h histogram\nh_bucket 1\n'), /line 2: histogram bucket without an le label/);
    assert.throws(() => parsePromText('# TYPE a gauge\n# TYPE a gauge\n'), /line 2: second TYPE for a/);
    assert.throws(() => parsePromText('# HELP a x\n# HELP a y\n'), /line 2: second HELP for a/);
    assert.throws(() => parsePromText('# TYPE a gauge\na{x="1",y="2"} 1\na{y="2",x="1"} 2\n'), /line 3: duplicate series a\{x="1",y="2"\}/);
  });
});
