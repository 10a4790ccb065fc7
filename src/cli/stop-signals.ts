// SIGTERM and SIGINT for `run`, heard from the start of start-up: a graceful stop, cut short by a second signal or a deadline.

/** How long a graceful stop may take after the first signal (the handshake workers' own stop gives them 2 s). */
export const STOP_DEADLINE_MS = 10_000;

export interface StopSignals {
  /** Resolves with the first SIGTERM or SIGINT. */
  readonly received: Promise<NodeJS.Signals>;
  /** The first signal, once one came (start-up checks it when it ends). */
  readonly signal: NodeJS.Signals | undefined;
  /** Stops listening and disarms the deadline (tests). */
  dispose(): void;
}

export interface StopOptions {
  /** Tells the operator (stderr). */
  say(line: string): void;
  /** Ends the process at once, whatever still runs or waits (libc's _exit: no thread is joined). */
  exitNow(code: number): never;
  deadlineMs?: number;
}

const EXIT_FAILURE = 1;

/**
 * Listens from now on: a signal during start-up is kept until start-up ends (or fails), rather than killing a
 * process half set up or, worse, going unheard. The first signal arms the deadline; past it, or on a second
 * signal, the process ends without waiting for what stalls.
 */
export function watchStopSignals(opts: StopOptions): StopSignals {
  const deadlineMs = opts.deadlineMs ?? STOP_DEADLINE_MS;
  let first: NodeJS.Signals | undefined;
  let deadline: NodeJS.Timeout | undefined;
  let heard: (signal: NodeJS.Signals) => void = () => {};
  const received = new Promise<NodeJS.Signals>((resolve) => (heard = resolve));
  const onSignal = (signal: NodeJS.Signals) => {
    if (first) {
      opts.say(`ironsocket: ${signal} again, exiting without waiting`);
      return opts.exitNow(EXIT_FAILURE);
    }
    first = signal;
    // Not unref'd: a stop stalled on a promise that nothing will settle must still end here, not exit 0 on an empty loop.
    deadline = setTimeout(() => {
      opts.say(`ironsocket: shutdown did not finish within ${deadlineMs / 1000} s of ${signal}; exiting without waiting`);
      opts.exitNow(EXIT_FAILURE);
    }, deadlineMs);
    heard(signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    received,
    get signal() {
      return first;
    },
    dispose() {
      clearTimeout(deadline);
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}
