// Gives a thread's memory back after a burst of connections: V8 and glibc otherwise keep a burst's high-water mark.
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { sys } from './libc.js';

/**
 * When a release is worth its cost (a full collection of the thread's heap and a trim of every malloc arena: tens of
 * milliseconds): after at least `minActivity` connections came or went, once none has for `quietMs`; after fewer, once
 * none has for `idleMs` and only if the heap grew by `growthBytes` since the last release (a health check every few
 * seconds costs nothing); at most once per `minIntervalMs`. Under steady load there is no quiet gap: nothing is paid.
 */
export interface SparePolicy {
  quietMs: number;
  minActivity: number;
  idleMs: number;
  growthBytes: number;
  minIntervalMs: number;
}

export const SPARE_POLICY: SparePolicy = { quietMs: 250, minActivity: 64, idleMs: 1000, growthBytes: 1 << 20, minIntervalMs: 1000 };

/** This thread's V8 heap, resident bytes. */
const heapBytes = (): number => getHeapStatistics().total_physical_size;

/**
 * Decides when one thread gives memory back. Clock-agnostic (callers pass `now` in ms): an event-loop timer drives
 * it, tests drive it by hand. Only threads that serve no established connection use it (main, handshake workers): a
 * release pauses its thread 20–130 ms, which on a relay thread would stall every stream it carries (bench:upgrade's
 * client-observed stall rose from 56 to 66–110 ms when the relay threads released after taking connections back).
 */
export class SpareMemory {
  private activity = 0;
  private lastActivity = -Infinity;
  private lastRelease = -Infinity;
  private heapAfterRelease: number;

  constructor(
    private readonly release: () => void = releaseMemory,
    private readonly policy: SparePolicy = SPARE_POLICY,
    private readonly heap: () => number = heapBytes,
  ) {
    this.heapAfterRelease = heap();
  }

  /** A connection came or went on this thread. */
  note(now: number): void {
    this.activity++;
    this.lastActivity = now;
  }

  /** Milliseconds until a release is due (0: now), or undefined when too little happened since the last one. */
  dueIn(now: number): number | undefined {
    const p = this.policy;
    if (this.activity === 0) return undefined;
    let quiet: number;
    if (this.activity >= p.minActivity) quiet = p.quietMs;
    else if (this.heap() >= this.heapAfterRelease + p.growthBytes) quiet = p.idleMs;
    else return undefined;
    const at = Math.max(this.lastActivity + quiet, this.lastRelease + p.minIntervalMs);
    return Math.max(0, at - now);
  }

  /** Releases if due; true when it did. */
  poll(now: number): boolean {
    if (this.dueIn(now) !== 0) return false;
    this.activity = 0;
    this.lastRelease = now;
    this.release();
    this.heapAfterRelease = this.heap();
    return true;
  }
}

/** A SpareMemory on a thread with an event loop: `note()` arms one unreferenced timer, never one per connection. */
export function spareOnEventLoop(spare: SpareMemory = new SpareMemory()): { note(): void; stop(): void } {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const arm = (now: number) => {
    const wait = spare.dueIn(now);
    if (wait !== undefined && !stopped) timer = setTimeout(check, wait).unref();
  };
  const check = () => {
    timer = undefined;
    const now = performance.now();
    spare.poll(now);
    arm(now);
  };
  return {
    note() {
      const now = performance.now();
      spare.note(now);
      if (timer === undefined) arm(now);
    },
    stop() {
      stopped = true;
      clearTimeout(timer);
      timer = undefined;
    },
  };
}

let collect: (() => void) | undefined;

/**
 * Collects this thread's garbage (one full collection: V8 gives back the pages it empties) and returns free memory to
 * the kernel (glibc never returns an arena's free pages unless asked). V8 would shrink its heap by itself seconds
 * later. Not V8's 'last-resort' flavour: it also shrinks the young space but takes three times as long (45–155 ms on
 * a busy 2-CPU machine, against 17–35), long enough to starve the relay threads of CPU.
 */
export function releaseMemory(): void {
  // `gc` exists only in contexts made after the flag is set; node keeps V8's flags writable after start for this.
  if (!collect) {
    setFlagsFromString('--expose-gc');
    collect = runInNewContext('gc') as () => void;
  }
  collect();
  sys.mallocTrim();
}
