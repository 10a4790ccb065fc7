// Checks that the logger emits JSON lines and never writes key or secret values.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { createLogger } from './log.js';

function capture(): { lines: () => Record<string, unknown>[]; stream: Writable } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return {
    stream,
    lines: () =>
      chunks
        .join('')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

describe('createLogger', () => {
  it('writes JSON lines at or above the configured level', () => {
    const out = capture();
    const log = createLogger('warn', out.stream);
    log.info('hidden');
    log.warn({ conn: 'c1' }, 'shown');
    const lines = out.lines();
    assert.equal(lines.length, 1);
    assert.equal(lines[0].msg, 'shown');
    assert.equal(lines[0].conn, 'c1');
    assert.equal(typeof lines[0].time, 'string');
  });

  it('redacts fields named key or secret, also when nested', () => {
    const out = capture();
    createLogger('info', out.stream).info({ key: 'K', tls: { secret: 'S', keys: { key: 'K2' } }, keyFile: '/etc/k.pem' }, 'x');
    const [line] = out.lines();
    assert.equal(line.key, '[redacted]');
    assert.deepEqual(line.tls, { secret: '[redacted]', keys: { key: '[redacted]' } });
    assert.equal(line.keyFile, '/etc/k.pem');
  });
});
