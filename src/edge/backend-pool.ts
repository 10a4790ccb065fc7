// Chooses the backend for each connection: round robin over a listener's backends, skipping one that just failed.
import type { Endpoint } from '../kernel/sockaddr.js';

/**
 * Passive health: a backend whose connect failed is skipped for `retryMs`, then tried again. When
 * every backend is marked down they are all still tried (the oldest failure first): refusing a
 * client outright because of stale marks would turn a blip into an outage.
 */
export class BackendPool {
  private next = 0;
  private readonly downUntil: number[];

  constructor(
    readonly backends: readonly Endpoint[],
    private readonly retryMs: number,
    private readonly now: () => number = Date.now,
  ) {
    if (backends.length === 0) throw new Error('a backend pool needs at least one backend');
    this.downUntil = backends.map(() => 0);
  }

  /** The order to try for one connection: healthy backends in round-robin order, then the ones marked down. */
  candidates(): Endpoint[] {
    const n = this.backends.length;
    const t = this.now();
    const up: number[] = [];
    const down: number[] = [];
    for (let k = 0; k < n; k++) {
      const i = (this.next + k) % n;
      (this.downUntil[i]! <= t ? up : down).push(i);
    }
    down.sort((a, b) => this.downUntil[a]! - this.downUntil[b]!);
    const order = [...up, ...down];
    // The rotation continues after the one tried first, so a skipped backend does not hand its turns to its neighbour.
    this.next = (order[0]! + 1) % n;
    return order.map((i) => this.backends[i]!);
  }

  /** Whether `ep` is currently skipped. */
  isDown(ep: Endpoint): boolean {
    const i = this.backends.indexOf(ep);
    return i >= 0 && this.downUntil[i]! > this.now();
  }

  failed(ep: Endpoint): void {
    const i = this.backends.indexOf(ep);
    if (i >= 0) this.downUntil[i] = this.now() + this.retryMs;
  }

  succeeded(ep: Endpoint): void {
    const i = this.backends.indexOf(ep);
    if (i >= 0) this.downUntil[i] = 0;
  }
}
