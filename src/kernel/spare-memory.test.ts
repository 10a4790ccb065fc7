// Checks when a thread gives memory back after a burst (never under steady load, never for a trickle) and that it does.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { getHeapStatistics } from 'node:v8';
import { SpareMemory, releaseMemory, spareOnEventLoop, type SparePolicy } from './spare-memory.js';

const policy: SparePolicy = { quietMs: 250, minActivity: 64, idleMs: 1000, growthBytes: 1 << 20, minIntervalMs: 1000 };

/** A SpareMemory whose releases are counted and whose heap is whatever `heap.bytes` says (a release empties it). */
function counted(): { spare: SpareMemory; releases: () => number; heap: { bytes: number } } {
  let n = 0;
  const heap = { bytes: 10 << 20 };
  const spare = new SpareMemory(
    () => {
      n++;
      heap.bytes = 10 << 20;
    },
    policy,
    () => heap.bytes,
  );
  return { spare, releases: () => n, heap };
}

test('a burst of connections is followed by one release once the thread has been quiet for a quarter second', () => {
  const { spare, releases } = counted();
  for (let t = 0; t < 100; t++) spare.note(10_000 + t);
  assert.equal(spare.dueIn(10_100), 249);
  assert.equal(spare.poll(10_200), false);
  assert.equal(spare.poll(10_349), true);
  assert.equal(releases(), 1);
  assert.equal(spare.poll(20_000), false, 'nothing happened since: no second release');
  assert.equal(spare.dueIn(20_000), undefined);
});

test('steady load never releases: each connection pushes the quiet point further', () => {
  const { spare, releases } = counted();
  for (let t = 0; t < 10_000; t += 10) {
    spare.note(t);
    spare.poll(t);
  }
  assert.equal(releases(), 0);
});

test('a trickle below the burst size that leaves the heap as it was never pays for a release', () => {
  const { spare, releases } = counted();
  for (let i = 0; i < 63; i++) {
    spare.note(i * 1000);
    spare.poll(i * 1000 + 999);
  }
  assert.equal(releases(), 0);
  assert.equal(spare.dueIn(100_000), undefined);
});

test('a few connections that grew the heap are released after a second of quiet', () => {
  const { spare, releases, heap } = counted();
  for (let i = 0; i < 10; i++) spare.note(i);
  assert.equal(spare.dueIn(100), undefined, 'the heap has not grown');
  heap.bytes += 2 << 20;
  assert.equal(spare.dueIn(100), 909);
  assert.equal(spare.poll(1_008), false);
  assert.equal(spare.poll(1_009), true);
  assert.equal(releases(), 1);
  spare.note(2_000);
  assert.equal(spare.dueIn(5_000), undefined, 'the release emptied it: one more connection is not worth another');
});

test('bursts a moment apart release at most once a second', () => {
  const { spare, releases } = counted();
  let at = 0;
  for (let burst = 0; burst < 10; burst++) {
    for (let i = 0; i < 64; i++) spare.note(at++);
    for (const end = at + 300; at < end; at += 10) spare.poll(at);
  }
  // 10 bursts in about 3.6 s: the first releases at once, the rest wait out the interval.
  assert.ok(releases() >= 3 && releases() <= 4, `${releases()} releases`);
});

test('on an event loop one timer does the waiting and the release comes without further calls', async () => {
  const { spare, releases } = counted();
  const driver = spareOnEventLoop(spare);
  for (let i = 0; i < 64; i++) driver.note();
  assert.equal(releases(), 0);
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(releases(), 1);
  driver.note();
  driver.stop();
});

test('a stopped driver releases nothing more', async () => {
  const { spare, releases } = counted();
  const driver = spareOnEventLoop(spare);
  for (let i = 0; i < 64; i++) driver.note();
  driver.stop();
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(releases(), 0);
});

test('a release collects the garbage the thread no longer holds and gives the heap back', () => {
  let keep: object[] = [];
  for (let i = 0; i < 300_000; i++) keep.push({ i, s: `garbage ${i}` });
  const full = getHeapStatistics();
  keep = [];
  void keep;
  releaseMemory();
  const after = getHeapStatistics();
  const mib = (b: number) => (b / 1048576).toFixed(1);
  assert.ok(after.used_heap_size < full.used_heap_size - 10 * 1048576, `used ${mib(full.used_heap_size)} → ${mib(after.used_heap_size)} MiB`);
  assert.ok(
    after.total_physical_size < full.total_physical_size - 8 * 1048576,
    `physical ${mib(full.total_physical_size)} → ${mib(after.total_physical_size)} MiB`,
  );
});
