// The new image's side of an upgrade: read the hand-off memfd, then take the connections back from the bridge once ready.
import { E, sys } from '../kernel/libc.js';
import type { Reclaimed } from '../relay/protocol.js';
import type { Relay } from '../relay/relay.js';
import { decodeState, readStateMemfd, type HandoffState } from './state.js';

export const HANDOFF_ENV = 'IRONSOCKET_HANDOFF_FD';

/** The relay worker entry every image uses: the relay loop with upgrade support. */
export const RELAY_WORKER = new URL('./relay-worker.js', import.meta.url);

/** If this process was exec'ed by an upgrade, reads (and closes) the hand-off memfd; removes the variable either way. */
export function takeHandoff(): HandoffState | undefined {
  const raw = process.env[HANDOFF_ENV];
  sys.scrubEnv(HANDOFF_ENV);
  if (!raw) return undefined;
  const fd = Number(raw);
  if (!Number.isInteger(fd) || fd < 3) throw new Error(`${HANDOFF_ENV}=${raw} is not a file descriptor`);
  const buf = readStateMemfd(fd);
  try {
    return decodeState(buf);
  } finally {
    buf.fill(0);
  }
}

/**
 * Takes every connection back from the bridge into `relay`. A bridge that stops answering for
 * `timeoutMs` is killed (its link closes, and what it held is reported lost). The bridge exits
 * after its last batch; this image, now its parent, collects it.
 */
export async function resumeFromBridge(relay: Relay, h: HandoffState, timeoutMs: number): Promise<Reclaimed> {
  const { linkFd, pid } = h.bridge;
  sys.setCloexec(linkFd, true);
  const kill = () => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  };
  const stop = stallWatchdog(relay, timeoutMs, kill);
  try {
    return await relay.reclaim(linkFd, h.moved);
  } finally {
    stop();
    sys.close(linkFd);
    reap(pid, Date.now() + timeoutMs, kill);
  }
}

/**
 * Calls `kill` when `timeoutMs` pass without a batch moving to or from the bridge: a slow bridge on a
 * loaded machine is left alone, a hung one is not. Returns the function that disarms it.
 */
export function stallWatchdog(relay: Relay, timeoutMs: number, kill: () => void): () => void {
  let t = setTimeout(kill, timeoutMs);
  const moved = () => {
    clearTimeout(t);
    t = setTimeout(kill, timeoutMs);
  };
  relay.on('progress', moved);
  return () => {
    clearTimeout(t);
    relay.off('progress', moved);
  };
}

/** Polls for the bridge's exit (Node did not start it, so nothing else will reap it); kills it past the deadline. */
function reap(pid: number, deadline: number, kill: () => void): void {
  const r = sys.reap(pid);
  if (r !== 0 && r !== -E.EINTR!) return;
  if (Date.now() > deadline) kill();
  setTimeout(() => reap(pid, deadline, kill), 50).unref();
}
