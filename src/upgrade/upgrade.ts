// In-place upgrade: pre-flight the new code, quiesce, freeze the relays, write the hand-off state to a memfd, and exec ourselves.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import { promisify } from 'node:util';
import { errnoName, sys } from '../kernel/libc.js';
import type { ProxyServer, UpgradeRecord } from '../proxy/server.js';
import type { CarriedPair } from '../relay/protocol.js';
import { wipeCarried } from './restore.js';
import { HANDOFF_ENV } from './early.js';
import { encodeState, writeStateMemfd, type HandoffState } from './state.js';

const run = promisify(execFile);

export interface UpgradeOptions {
  /** How long in-progress handshakes may take to finish before they are closed. */
  handshakeBoundMs: number;
  /** Called with the outcome when the upgrade does not happen (refused, or exec failed). */
  onFailure?: (r: UpgradeRecord) => void;
}

/** The command line that started us, as [script, 'run', ...flags]; pre-flight swaps 'run' for 'check'. */
function ownCommand(): { script: string; flags: string[] } {
  const [, script, sub, ...flags] = process.argv;
  if (!script || sub !== 'run') throw new Error(`cannot upgrade: not started as \`ironsocket run\` (argv: ${process.argv.slice(1).join(' ')})`);
  return { script, flags };
}

/** Runs the code now on disk in check mode against the running configuration. */
async function preflight(): Promise<string | undefined> {
  const { script, flags } = ownCommand();
  try {
    await run(process.execPath, [...process.execArgv, script, 'check', ...flags], { timeout: 60_000, env: { ...process.env, [HANDOFF_ENV]: '' } });
    return undefined;
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; message: string };
    return `pre-flight check failed: ${(err.stderr || err.stdout || err.message).trim()}`;
  }
}

let busy = false;

/**
 * Upgrades in place. Returns only when the upgrade did not happen — refused by pre-flight, or exec
 * failed — after everything has resumed; on success this process image is replaced.
 */
export async function upgradeInPlace(server: ProxyServer, opts: UpgradeOptions, attempt = crypto.randomBytes(6).toString('hex')): Promise<UpgradeRecord> {
  const log = server.deps.logger.child({ upgrade: attempt });
  const fail = (error: string): UpgradeRecord => {
    const r: UpgradeRecord = { attempt, ok: false, at: new Date().toISOString(), error };
    server.lastUpgrade = r;
    server.count('upgrades_failed');
    log.error({ err: error }, `upgrade failed: ${error}`);
    opts.onFailure?.(r);
    return r;
  };
  if (busy) return fail('another upgrade is in progress');
  busy = true;
  try {
    log.info({ generation: server.generation }, 'upgrade requested: running pre-flight check of the code on disk');
    const refused = await preflight().catch((e: Error) => e.message);
    if (refused) return fail(refused);

    server.pauseAccepting();
    const aborted = await server.settleHandshakes(opts.handshakeBoundMs);
    if (aborted) log.warn({ aborted }, `closed ${aborted} handshake(s) that did not finish within ${opts.handshakeBoundMs} ms`);
    const frozenAt = Date.now();
    let pairs: CarriedPair[];
    try {
      pairs = await server.deps.relay.freeze();
    } catch (e) {
      server.resumeAccepting();
      return fail((e as Error).message);
    }
    const error = execWithState(server, attempt, frozenAt, pairs);
    // Still here: exec failed. Everything resumes as it was.
    wipeCarried(pairs);
    server.deps.relay.thaw();
    server.resumeAccepting();
    return fail(error);
  } finally {
    busy = false;
  }
}

/** Writes the state, clears close-on-exec on exactly the carried fds, and execs. Returns only on failure. */
function execWithState(server: ProxyServer, attempt: string, frozenAt: number, pairs: CarriedPair[]): string {
  const state: HandoffState = {
    generation: server.generation + 1,
    attempt,
    startedAt: server.startedAt,
    frozenAt,
    execAt: 0,
    counters: { ...server.counters, upgrades: (server.counters.upgrades ?? 0) + 1 },
    probe: server.deps.probe,
    listeners: server.listeners.map((l) => ({ fd: l.fd, address: l.address })),
    pairs,
    nextId: server.nextId,
  };
  let memfd = -1;
  state.execAt = Date.now();
  const carried = [...state.listeners.map((l) => l.fd), ...pairs.flatMap((p) => [p.clientFd, p.backendFd])];
  // Node marks stdio close-on-exec at start-up; the new image must keep writing to the same stdout/stderr.
  const stdio = [0, 1, 2].filter((fd) => {
    try {
      return sys.isCloexec(fd);
    } catch {
      return false;
    }
  });
  try {
    const encoded = encodeState(state);
    try {
      memfd = writeStateMemfd(encoded);
    } finally {
      encoded.fill(0);
    }
    for (const fd of [memfd, ...stdio, ...carried]) sys.setCloexec(fd, false);
    server.deps.logger.info({ generation: state.generation, connections: pairs.length, listeners: state.listeners.length }, 'exec');
    const env = Object.entries({ ...process.env, [HANDOFF_ENV]: String(memfd) }).map(([k, v]) => `${k}=${v ?? ''}`);
    // Fault injection for tests only: exec a path that does not exist to prove the old image resumes.
    const path = process.env.IRONSOCKET_FAULT_EXEC_PATH || process.execPath;
    const errno = sys.execve(path, [process.execPath, ...process.execArgv, ...process.argv.slice(1)], env);
    return `execve(${path}) failed: ${errnoName(errno)}`;
  } catch (e) {
    return (e as Error).message;
  } finally {
    for (const fd of [...stdio, ...carried]) {
      try {
        sys.setCloexec(fd, true);
      } catch {
        /* closed meanwhile */
      }
    }
    if (memfd >= 0) sys.close(memfd);
  }
}
