// Starts the restoring relay worker as early as possible after exec, before the CLI and config code load.
import { Relay } from '../relay/relay.js';
import type { RestoredSummary } from '../relay/protocol.js';

export const HANDOFF_ENV = 'IRONSOCKET_HANDOFF_FD';

let early: { relay: Relay; restored: Promise<RestoredSummary> } | undefined;

/** If this process was exec'ed by an upgrade, hands the memfd to a restoring relay worker at once. */
export function startEarlyRestore(): void {
  const raw = process.env[HANDOFF_ENV];
  delete process.env[HANDOFF_ENV];
  if (!raw || early) return;
  const fd = Number(raw);
  if (!Number.isInteger(fd) || fd < 3) throw new Error(`${HANDOFF_ENV}=${raw} is not a file descriptor`);
  // The idle timeout is not known before the config loads; start.ts configures it.
  const relay = new Relay({ idleTimeoutMs: 0, handoffFd: fd, workerUrl: new URL('./restoring-worker.js', import.meta.url) });
  early = { relay, restored: new Promise((resolve) => relay.once('restored', resolve)) };
}

/** The early relay and its restore summary, once (undefined when this start is not an upgrade). */
export function takeEarlyRestore(): typeof early {
  startEarlyRestore();
  const e = early;
  early = undefined;
  return e;
}
