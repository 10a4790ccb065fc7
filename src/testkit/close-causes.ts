// Tests assert why a connection ended through the proxy's closed_<cause> counters, not only its log line.
import assert from 'node:assert/strict';
import { eventually, type RunningProxy } from './proxy-process.js';
import type { CloseCause } from '../core/connection.js';

/** Waits until `closed_<cause>` is one more than in `before` (a status snapshot's counters), and exactly one. */
export async function countedAs(p: RunningProxy, before: Record<string, number>, cause: CloseCause): Promise<void> {
  const key = `closed_${cause}`;
  const now = async () => (await p.status()).counters[key] ?? 0;
  await eventually(async () => (await now()) > (before[key] ?? 0), 10_000, `the close to be counted as ${key}`);
  assert.equal(await now(), (before[key] ?? 0) + 1, `counted once as ${key}`);
}
