// In-place upgrade: pre-flight the new code, let a bridge process accept and hold connections, exec ourselves, and take them back.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { SOCK_SEQPACKET, errnoName, sys } from '../kernel/libc.js';
import type { UpgradeRecord } from '../core/types.js';
import type { Logger } from '../core/log.js';
import type { KernelProbe } from '../kernel/probe.js';
import type { Migrated, Relay } from '../relay/relay.js';
import type { ConnectionInfo } from '../core/connection.js';
import { BRIDGE_DOOR_FLAG, closeDoor, encodeDoorOrder, handOver, openDoor, type DoorOrder } from './door.js';
import { upgradeHooks } from './hooks.js';
import { Link } from './link.js';
import { wipeListeners } from '../edge/listener-setup.js';
import { HANDOFF_ENV, stallWatchdog } from './resume.js';
import { encodeState, writeStateMemfd, type HandoffState } from './state.js';
import type { CounterName } from '../core/counters.js';
import type { CarriedTickets } from '../edge/session-tickets.js';

const run = promisify(execFile);

export interface UpgradeOptions {
  /** How long in-progress handshakes may take to finish before they are closed. */
  handshakeBoundMs: number;
  /** Called with the outcome when the upgrade does not happen (refused, or exec failed). */
  onFailure?: (r: UpgradeRecord) => void;
  /** How long the bridge may take to start and take every connection (default 30 s). */
  bridgeTimeoutMs?: number;
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
  // Not niced: on a saturated machine a niced check starves and never finishes.
  try {
    await run(process.execPath, [...process.execArgv, script, 'check', ...flags], {
      timeout: PREFLIGHT_TIMEOUT_MS,
      env: { ...process.env, [HANDOFF_ENV]: '' },
    });
    return undefined;
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; message: string; killed?: boolean; signal?: string };
    if (err.killed || err.signal) return `pre-flight check did not finish within ${PREFLIGHT_TIMEOUT_MS / 1000} s (${err.signal ?? 'killed'})`;
    return `pre-flight check failed: ${(err.stderr || err.stdout || err.message).trim()}`;
  }
}

/** A running bridge process and our end of its link. */
interface Bridge {
  linkFd: number;
  child: ChildProcess;
  /** Why it exited, once it has. */
  exit?: string;
}

/** Starts the bridge (the code on disk) with its end of a seqpacket link as fd 3; `door`: it will be asked to accept. */
function startBridge(door: boolean): Bridge {
  const [mine, theirs] = sys.socketpair(SOCK_SEQPACKET);
  try {
    const entry = upgradeHooks.bridgeEntry ?? fileURLToPath(new URL('./bridge.js', import.meta.url));
    const child = spawn(process.execPath, [...process.execArgv, entry, ...(door ? [BRIDGE_DOOR_FLAG] : [])], {
      stdio: ['ignore', 'inherit', 'inherit', theirs],
    });
    const bridge: Bridge = { linkFd: mine, child };
    child.on('error', (e) => (bridge.exit = e.message));
    child.on('exit', (code, signal) => (bridge.exit = signal ? `killed by ${signal}` : `exited with code ${code}`));
    return bridge;
  } catch (e) {
    sys.close(mine);
    throw e;
  } finally {
    sys.close(theirs);
  }
}

/** What an upgrade needs of the running server, nothing more (runtime/server.ts's ProxyServer is one). */
export interface UpgradeHost {
  readonly deps: {
    readonly logger: Logger;
    readonly relay: Relay;
    readonly config: { readonly idleTimeoutMs: number };
    readonly probe: KernelProbe;
    /** Present when the fd store is on. */
    readonly store?: unknown;
  };
  readonly generation: number;
  readonly startedAt: string;
  readonly counters: Readonly<Record<string, number>>;
  /** The counters kept per listener name (metrics label them). */
  readonly listenerCounters: ReadonlyMap<string, Readonly<Record<string, number>>>;
  readonly nextId: number;
  /** The bound listening sockets, carried across exec. */
  readonly listeners: readonly { readonly fd: number; readonly address: string }[];
  /** The outcome of this attempt, when it did not happen (status and metrics report it). */
  recordUpgrade(r: UpgradeRecord): void;
  /** A copy of the session ticket keys, for the new image (zeroed here once encoded). */
  carryTickets(): CarriedTickets;
  count(name: CounterName, by?: number): void;
  /** Whether the bridge can accept for this image's listeners (then it boots its handshake worker at once). */
  readonly bridgeCanServe: boolean;
  /** What the bridge needs to accept and handshake as this image does (keys included: wiped after use), or undefined if it cannot. */
  doorOrder(): Promise<DoorOrder | undefined>;
  /** New connection numbers start after `highest` (the bridge gave out numbers up to it). */
  idsAfter(highest: number): void;
  /** Records connections that came back from the bridge (those it accepted itself are new here). */
  adoptRelayed(infos: ConnectionInfo[]): void;
  pauseAccepting(): void;
  resumeAccepting(): void;
  /** Waits up to `boundMs` for handshakes in progress, then closes the rest; resolves with how many it closed. */
  settleHandshakes(boundMs: number): Promise<number>;
}

const PREFLIGHT_TIMEOUT_MS = 180_000;
/**
 * How long the bridge may take to arm its handshake worker before this image gives up on it accepting. This image still
 * accepts meanwhile, so waiting costs no client anything; in a one-CPU guest the worker's boot can outlast the check.
 */
const SERVING_TIMEOUT_MS = 30_000;

let busy = false;

/**
 * Upgrades in place. Returns only when the upgrade did not happen — refused by pre-flight, or exec
 * failed — after everything has resumed; on success this process image is replaced.
 */
export async function upgradeInPlace(server: UpgradeHost, opts: UpgradeOptions, attempt = crypto.randomBytes(6).toString('hex')): Promise<UpgradeRecord> {
  const log = server.deps.logger.child({ upgrade: attempt });
  const relay = server.deps.relay;
  const fail = (error: string): UpgradeRecord => {
    const r: UpgradeRecord = { attempt, ok: false, at: new Date().toISOString(), error };
    server.recordUpgrade(r);
    server.count('upgrades_failed');
    log.error({ err: error }, `upgrade failed: ${error}`);
    opts.onFailure?.(r);
    return r;
  };
  if (busy) return fail('another upgrade is in progress');
  busy = true;
  let bridge: Bridge | undefined;
  try {
    log.info({ generation: server.generation }, 'upgrade requested: running pre-flight check of the code on disk');
    // The bridge (and its handshake worker) boots while the check runs: it does nothing until this image tells it to.
    try {
      bridge = startBridge(server.bridgeCanServe);
    } catch (e) {
      return fail(`cannot start the upgrade bridge: ${(e as Error).message}`);
    }
    const refused = await preflight().catch((e: Error) => e.message);
    if (refused) {
      bridge.child.kill('SIGKILL');
      await exited(bridge, 1000);
      return fail(refused);
    }

    const link = new Link(bridge.linkFd);
    const bound = opts.bridgeTimeoutMs ?? 30_000;
    // The bridge accepts and handshakes new clients from now until the new image (or this one, if exec fails) takes over.
    const door = await openDoor(
      link,
      () => doorBytes(server),
      server.listeners.map((l) => l.fd),
      bound,
      SERVING_TIMEOUT_MS,
    );
    if (door.error) {
      await exited(bridge, 1000);
      bridge.child.kill('SIGKILL');
      return fail(`starting the upgrade bridge: ${door.error}${bridge.exit ? ` (bridge ${bridge.exit})` : ''}`);
    }
    server.pauseAccepting();
    if (door.serving) {
      const err = handOver(link, server.nextId);
      if (err) {
        bridge.child.kill('SIGKILL');
        return fail(`starting the upgrade bridge: ${err}`);
      }
      log.info('the upgrade bridge accepts new clients until the new image does');
    } else {
      log.warn(`the upgrade bridge does not accept (${door.why}): new clients wait in the backlog until the new image accepts`);
    }
    const aborted = await server.settleHandshakes(opts.handshakeBoundMs);
    if (aborted) log.warn({ aborted }, `closed ${aborted} handshake(s) that did not finish within ${opts.handshakeBoundMs} ms`);
    // A bridge that hangs is killed: its link then closes and the worker stops waiting for it.
    const b = bridge;
    const disarm = stallWatchdog(relay, bound, () => b.child.kill('SIGKILL'));
    const migrated = await relay.migrate(bridge.linkFd, server.deps.config.idleTimeoutMs, true);
    disarm();
    if (migrated.error) {
      await exited(bridge, 1000); // its exit status is the clearest reason
      await takeBack(server, bridge, migrated.moved, log, bound, door.serving);
      return fail(`moving connections to the upgrade bridge: ${migrated.error}${bridge.exit ? ` (bridge ${bridge.exit})` : ''}`);
    }
    log.info({ moved: migrated.moved, intoBridgeMs: migrated.intoBridgeMs }, 'every connection is in the upgrade bridge');
    upgradeHooks.beforeExec?.();
    const error = execWithState(server, attempt, bridge, migrated, door.serving);
    // Still here: exec failed. Everything comes back and resumes as it was.
    await takeBack(server, bridge, migrated.moved, log, bound, door.serving);
    return fail(error);
  } finally {
    if (bridge) sys.close(bridge.linkFd);
    server.resumeAccepting();
    busy = false;
  }
}

/** Resolves once the bridge has exited, or after `ms`. */
function exited(bridge: Bridge, ms: number): Promise<void> {
  if (bridge.exit !== undefined) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    bridge.child.once('exit', () => setImmediate(() => (clearTimeout(t), resolve())));
  });
}

/** The bridge's order as bytes (the caller wipes them), its keys wiped here; undefined when the bridge cannot serve. */
async function doorBytes(server: UpgradeHost): Promise<Buffer | undefined> {
  const order = await server.doorOrder();
  if (!order) return undefined;
  try {
    return encodeDoorOrder(order);
  } finally {
    wipeListeners(order.handshake.listeners);
    order.tickets.keys.fill(0);
  }
}

/**
 * Takes accepting and the connections back from the bridge into this image (the upgrade is not happening): first
 * the listening sockets (the bridge stops, this image accepts again at once), then every connection, those the
 * bridge accepted meanwhile included.
 */
async function takeBack(server: UpgradeHost, bridge: Bridge, moved: number, log: Logger, timeoutMs: number, serving: boolean): Promise<void> {
  if (bridge.exit === undefined) {
    if (serving) {
      const door = await closeDoor(new Link(bridge.linkFd), timeoutMs);
      if (typeof door === 'string') log.error(`stopping the upgrade bridge accepting: ${door}`);
      else takeCounts(server, door.nextId, door.counts);
    }
    server.resumeAccepting();
    const disarm = stallWatchdog(server.deps.relay, timeoutMs, () => bridge.child.kill('SIGKILL'));
    const r = await server.deps.relay.reclaim(bridge.linkFd, moved);
    disarm();
    if (r.error) log.error({ err: r.error }, `taking connections back from the upgrade bridge: ${r.error}`);
    server.adoptRelayed(r.connections);
    takeCounts(server, 0, r.counts);
    log.info({ reclaimed: r.connections.length, closed: r.closed.length, failed: r.failed.length }, 'connections back from the upgrade bridge');
  }
  bridge.child.kill('SIGKILL'); // normally gone already: it exits after its last batch
}

/** Adds what the bridge counted for the clients it accepted; ids continue after the ones it gave out. */
export function takeCounts(server: Pick<UpgradeHost, 'count' | 'idsAfter'>, nextId: number, counts: Record<string, number> | undefined): void {
  if (nextId > 0) server.idsAfter(nextId - 1);
  for (const [name, n] of Object.entries(counts ?? {})) server.count(name as CounterName, n);
}

/** Writes the state, clears close-on-exec on exactly the carried fds, and execs. Returns only on failure. */
function execWithState(server: UpgradeHost, attempt: string, bridge: Bridge, migrated: Migrated, serving: boolean): string {
  const state: HandoffState = {
    generation: server.generation + 1,
    attempt,
    startedAt: server.startedAt,
    execAt: 0,
    intoBridgeMs: migrated.intoBridgeMs,
    moved: migrated.moved,
    counters: { ...server.counters, upgrades: (server.counters.upgrades ?? 0) + 1 },
    listenerCounters: Object.fromEntries([...server.listenerCounters].map(([name, c]) => [name, { ...c }])),
    probe: server.deps.probe,
    listeners: server.listeners.map((l) => ({ fd: l.fd, address: l.address })),
    bridge: { linkFd: bridge.linkFd, pid: bridge.child.pid ?? -1, serving },
    nextId: server.nextId,
    fdStore: server.deps.store !== undefined,
    tickets: server.carryTickets(),
  };
  let memfd = -1;
  state.execAt = Date.now();
  const carried = [...state.listeners.map((l) => l.fd), bridge.linkFd];
  // Node marks stdio close-on-exec at start-up; the new image must keep writing to the same stdout/stderr.
  const stdio = [0, 1, 2].filter((fd) => {
    try {
      return sys.isCloexec(fd);
    } catch {
      return false;
    }
  });
  try {
    let encoded: Buffer;
    try {
      encoded = encodeState(state);
    } finally {
      state.tickets?.keys.fill(0);
    }
    try {
      memfd = writeStateMemfd(encoded);
    } finally {
      encoded.fill(0);
    }
    for (const fd of [memfd, ...stdio, ...carried]) sys.setCloexec(fd, false);
    server.deps.logger.info({ generation: state.generation, listeners: state.listeners.length, bridge: state.bridge.pid }, 'exec');
    const env = Object.entries({ ...process.env, [HANDOFF_ENV]: String(memfd) }).map(([k, v]) => `${k}=${v ?? ''}`);
    const path = upgradeHooks.execPath ?? process.execPath;
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
