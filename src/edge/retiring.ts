// Frees what a replaced listener runtime holds (its TLS servers) once the last connection that uses it has ended.

/** Counts the connections under way on each `T`; a `T` retired while some are releases when the last one leaves. */
export class Retiring<T> {
  readonly #inFlight = new Map<T, number>();
  readonly #retired = new Set<T>();

  constructor(private readonly release: (t: T) => void) {}

  /** A connection starts using `t`; call the returned function (once) when it no longer does. */
  enter(t: T): () => void {
    this.#inFlight.set(t, (this.#inFlight.get(t) ?? 0) + 1);
    let left = false;
    return () => {
      if (left) return;
      left = true;
      const n = this.#inFlight.get(t)! - 1;
      if (n > 0) return void this.#inFlight.set(t, n);
      this.#inFlight.delete(t);
      if (this.#retired.delete(t)) this.release(t);
    };
  }

  /** `ts` were replaced: each is released now, or when its last connection leaves. */
  retire(ts: Iterable<T>): void {
    for (const t of ts) {
      if (this.#inFlight.has(t)) this.#retired.add(t);
      else this.release(t);
    }
  }
}
