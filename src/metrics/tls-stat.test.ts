// Checks the /proc/net/tls_stat parser against the kernel's exact output format.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseTlsStat, readTlsStat } from './tls-stat.js';

// As a 6.x kernel prints it (net/tls/tls_proc.c: "%-32s\t%lu\n" per counter).
const SAMPLE = [
  ['TlsCurrTxSw', 3],
  ['TlsCurrRxSw', 3],
  ['TlsCurrTxDevice', 0],
  ['TlsCurrRxDevice', 0],
  ['TlsTxSw', 120],
  ['TlsRxSw', 118],
  ['TlsTxDevice', 0],
  ['TlsRxDevice', 0],
  ['TlsDecryptError', 2],
  ['TlsRxDeviceResync', 0],
  ['TlsDecryptRetry', 0],
  ['TlsRxNoPadViolation', 0],
  ['TlsRxRekeyOk', 1],
  ['TlsRxRekeyError', 0],
  ['TlsTxRekeyOk', 1],
  ['TlsTxRekeyError', 0],
  ['TlsRxRekeyReceived', 1],
] as const;
const SAMPLE_TEXT = SAMPLE.map(([n, v]) => `${n.padEnd(32)}\t${v}\n`).join('');

describe('parseTlsStat', () => {
  it('reads every counter of the kernel format', () => {
    assert.deepEqual(parseTlsStat(SAMPLE_TEXT), Object.fromEntries(SAMPLE));
  });

  it('rejects a line that is not a name and a count, naming the line', () => {
    assert.throws(() => parseTlsStat('TlsCurrTxSw\t1\nTlsCurrRxSw\tmany\n'), /line 2/);
    assert.throws(() => parseTlsStat('TlsCurrTxSw\t1 2\n'), /line 1/);
    assert.throws(() => parseTlsStat('TlsCurrTxSw\t1\nTlsCurrTxSw\t2\n'), /line 2 repeats TlsCurrTxSw/);
  });
});

describe('readTlsStat', () => {
  it('returns undefined for a missing file and the counters for a present one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ironsocket-tlsstat-'));
    try {
      assert.equal(await readTlsStat(join(dir, 'absent')), undefined);
      await writeFile(join(dir, 'tls_stat'), SAMPLE_TEXT);
      assert.equal((await readTlsStat(join(dir, 'tls_stat')))?.TlsDecryptError, 2);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
