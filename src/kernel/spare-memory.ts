// Gives a thread's memory back after a burst of connections: V8 and glibc otherwise keep a burst's high-water mark.
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { sys } from './libc.js';

/**
 * When a release is worth its cost (full collections of the thread's heap and a trim of every malloc arena: tens of
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
 * Decides when one thread gives memory back. Clock-agnostic (callers pass `now` in ms) so that the synchronous relay
 * loop and an event-loop timer drive it alike.
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

  /** Start-up (modules, certificates, workers) left garbage like a burst: give it back once quiet, as after one. */
  started(now: number): void {
    this.activity = Math.max(this.activity, this.policy.minActivity);
    this.lastActivity = Math.max(this.lastActivity, now);
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
export function spareOnEventLoop(spare: SpareMemory = new SpareMemory()): { note(): void; started(): void; stop(): void } {
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
  const marking = (mark: (now: number) => void) => () => {
    const now = performance.now();
    mark(now);
    if (timer === undefined) arm(now);
  };
  return {
    note: marking((now) => spare.note(now)),
    started: marking((now) => spare.started(now)),
    stop() {
      stopped = true;
      clearTimeout(timer);
      timer = undefined;
    },
  };
}

type Collect = (options?: { type: 'major'; execution: 'sync'; flavor: 'last-resort' }) => void;
let collect: Collect | undefined;
/** V8 12 (node 22) and later take a flavour: 'last-resort' is what V8 does under memory pressure, young space shrunk too. */
const LAST_RESORT = Number(process.versions.v8.split('.')[0]) >= 12;

/**
 * Collects this thread's garbage and returns free memory to the kernel. V8 would shrink its heap by itself seconds
 * later, and only on threads whose event loop turns (not the relay's synchronous loop); glibc never returns an
 * arena's free pages unless asked. On V8 11 (node 20) two plain collections: the second releases the pages the first
 * emptied, the young space keeps its size.
 */
export function releaseMemory(): void {
  // `gc` exists only in contexts made after the flag is set; node keeps V8's flags writable after start for this.
  if (!collect) {
    setFlagsFromString('--expose-gc');
    collect = runInNewContext('gc') as Collect;
  }
  if (LAST_RESORT) {
    collect({ type: 'major', execution: 'sync', flavor: 'last-resort' });
  } else {
    collect();
    collect();
  }
  sys.mallocTrim();
}
