// Starts the proxy — fresh, or continuing a previous image's connections after exec — and serves the admin socket.
import { performance } from 'node:perf_hooks';
import type { Logger } from '../core/log.js';
import { keylogWarning } from '../handshake/keylog-file.js';
import { overwriteFreedMemory, sys } from '../kernel/libc.js';
import { Poller } from '../kernel/poller.js';
import { probeKernel } from '../kernel/probe.js';
import { formatEndpoint, type Endpoint } from '../kernel/sockaddr.js';
import { Relay } from '../relay/relay.js';
import type { Reclaimed } from '../relay/protocol.js';
import { RELAY_WORKER, resumeFromBridge, takeHandoff } from '../carry/resume.js';
import { closeDoor } from '../carry/door.js';
import { Link } from '../carry/link.js';
import { takeCounts } from '../carry/upgrade.js';
import type { HandoffState } from '../carry/state.js';
import { checkListener } from '../carry/restore.js';
import { wipeListeners } from '../edge/listener-setup.js';
import { startControls, type Controls } from './control.js';
import { dropPrivileges, upgradeReachProblem } from './privileges.js';
import { preflight, StartupError, type Preflight } from './preflight.js';
import { restartFromStore } from '../carry/restart.js';
import { FdStore, LISTENER_FDNAME, connectionFdName } from '../service/fd-store.js';
import { fdStoreFor, passedDescriptors, serviceNotes } from '../service/systemd.js';
import type { Listener } from '../edge/listener.js';
import { ProxyServer } from './server.js';
import { SessionTickets } from '../edge/session-tickets.js';
import type { ProxyConfig } from '../core/types.js';
import { counter } from '../core/counters.js';

export interface ProxyHandle {
  close(): Promise<void>;
  describeKtls(): string;
  /** Resolved listening address (useful with port 0). */
  readonly address: string;
}

export { StartupError };

function sameEndpoint(carried: string, want: Endpoint): boolean {
  const w = formatEndpoint(want);
  return want.port === 0 ? carried.replace(/:\d+$/, '') === w.replace(/:\d+$/, '') : carried === w;
}

export interface StartDeps {
  logger: Logger;
  /** Reads the configuration again (same file and flags), for reloads (SIGHUP, `ironsocket reload`). */
  reloadConfig?: () => Promise<ProxyConfig>;
}

export async function startProxy(config: ProxyConfig, deps: StartDeps): Promise<ProxyHandle> {
  const log = deps.logger;
  // OpenSSL frees each handshake's secrets with free(): have glibc overwrite them (see overwriteFreedMemory).
  if (!overwriteFreedMemory()) log.warn('mallopt(M_PERTURB) refused: memory OpenSSL frees keeps its bytes until reused');
  // After exec: what the previous image handed over (its connections wait in the upgrade bridge).
  const handoff = takeHandoff();
  /** Milliseconds since the previous image called execve, at each step of this one's start (logged with the upgrade's outcome). */
  const boot: Record<string, number> = {};
  const mark = (step: string) => {
    if (handoff) boot[step] = Math.round(performance.timeOrigin + performance.now() - handoff.execAt);
  };
  if (handoff) {
    boot.nodeStarted = Math.round(performance.timeOrigin - handoff.execAt);
    boot.nodeBootstrapped = Math.round(performance.timeOrigin + performance.nodeTiming.bootstrapComplete - handoff.execAt);
    mark('startProxy');
  }
  const probe = handoff?.probe ?? probeKernel();
  // Everything that can refuse the start short of binding (the same function `ironsocket check` runs): kTLS policy,
  // capabilities, `user`/`group`, the key log file, certificates, keys, CA and CRL, the ticket key file, addresses.
  let pre: Preflight;
  try {
    pre = await preflight(config, { probe, warn: (message, file) => log.warn({ file }, message) });
  } catch (e) {
    handoff?.tickets?.keys.fill(0);
    throw e;
  }
  const { support, kernelSuites, tlsBase, served, keylogFile } = pre;
  // Debug switch only: with it, every session can be decrypted by whoever reads the file. Said loudly, every start.
  if (keylogFile !== undefined) log.error({ keylogFile }, keylogWarning(keylogFile));
  mark('certificatesLoaded');
  // One set of session ticket keys for every worker: the key file's, else those the previous image carried, else new ones.
  const tickets = new SessionTickets(pre.tickets, handoff?.tickets);
  const poller = new Poller();
  const stagger = handoff !== undefined;
  const store = fdStoreFor(config.fdStore, log, config.maxConnections);
  const relay = new Relay({ idleTimeoutMs: config.idleTimeoutMs, workerUrl: RELAY_WORKER, shards: config.workers, stagger, fdStore: store?.socket });
  const handshake = {
    listeners: served,
    tlsBase,
    policy: config.ktls,
    kernelSuites: [...kernelSuites],
    handshakeTimeoutMs: config.handshakeTimeoutMs,
    backendConnectTimeoutMs: config.backendConnectTimeoutMs,
    backendRetryMs: config.backendRetryMs,
    logLevel: config.logLevel,
    keylogFile,
  };
  const server = new ProxyServer({ config, logger: log, poller, relay, handshake, staggerWorkers: stagger, probe, support, kernelSuites, store, tickets });
  wipeListeners(served); // the handshake workers have their copies
  server.setServed(served);
  server.pauseAccepting();

  if (handoff) server.continueFrom(handoff);
  const notes = serviceNotes(log);
  // Sockets to adopt rather than bind: the previous image's (after an upgrade), or systemd's (socket activation, fd store).
  const carried = [...(handoff?.listeners ?? [])];
  const passed = passedDescriptors(log);
  const activated = passed.listeners;
  const bound: Listener[] = [];
  try {
    for (const at of pre.endpoints) {
      const i = carried.findIndex((c) => sameEndpoint(c.address, at));
      const mine = i >= 0 ? carried.splice(i, 1)[0] : undefined;
      if (mine) {
        const bad = checkListener(mine);
        if (bad) throw new Error(`carried listener: ${bad}`);
      }
      // Port 0 (any port) takes a passed socket on the same host: a restart finds the port it had.
      const passedAt = mine ? undefined : [...activated.keys()].find((a) => sameEndpoint(a, at));
      const fromSystemd = passedAt === undefined ? undefined : activated.get(passedAt);
      if (passedAt !== undefined) activated.delete(passedAt);
      bound.push(server.bind(at, mine?.fd ?? fromSystemd));
    }
    for (const l of carried) sys.close(l.fd);
    for (const [address, fd] of activated) {
      log.warn({ address }, `socket activation: no listener is configured for ${address}; closed the socket systemd passed`);
      sys.close(fd);
    }
    server.serve(bound);
  } catch (e) {
    for (const l of bound) l.close();
    for (const l of carried) sys.close(l.fd);
    for (const fd of activated.values()) sys.close(fd);
    poller.close();
    // The workers were starting (the handshake workers too: left running, they held the process at its exit).
    await server.close(true);
    throw new StartupError((e as Error).message, 'LISTEN');
  }
  if (passed.connections.size > 0) resumeStored(server, passed.connections, store);
  if (passed.storedListeners && !store) leaveStore(log, []); // fd_store turned off since the last run
  await server.started; // every worker thread is up: ready means ready
  mark('workersStarted');

  let controls: Controls;
  try {
    controls = await startControls({ server, logger: log, tlsBase, reloadConfig: deps.reloadConfig, notes });
  } catch (e) {
    poller.close();
    await server.close();
    throw new StartupError((e as Error).message, 'ADMIN');
  }
  try {
    const who = dropPrivileges({ user: config.user, group: config.group, adminSocket: config.adminSocket }, pre.identity);
    if (who) log.info(who, `running as uid ${who.uid} gid ${who.gid}`);
    const unreachable = who ? upgradeReachProblem() : undefined;
    if (unreachable) log.warn(unreachable);
  } catch (e) {
    poller.close();
    await controls.close();
    await server.close();
    throw new StartupError((e as Error).message, 'PRIVILEGES');
  }
  if (handoff?.bridge.serving) {
    // The bridge accepted for the previous image: it stops, and this image takes over at once.
    const door = await closeDoor(new Link(handoff.bridge.linkFd), 30_000);
    if (typeof door === 'string') log.error(`stopping the upgrade bridge accepting: ${door}`);
    else takeCounts(server, door.nextId, door.counts);
  }
  // Only now: no client is ever served by a process that has not dropped root yet.
  log.info({ uid: process.getuid!(), gid: process.getgid!() }, 'accepting connections');
  server.resumeAccepting();
  mark('accepting');
  const address = server.listeners[0]!.address;
  for (const [i, l] of server.listeners.entries()) {
    const s = server.served[i]!;
    log.info(
      { listener: s.name, listen: l.address, backends: s.backends.map(formatEndpoint), names: s.groups.flatMap((g) => g.names), alpn: s.alpn },
      'listening',
    );
  }
  if (handoff) {
    // Now that this image is ready, its connections come back from the bridge (which relayed them meanwhile).
    const r = await resumeFromBridge(relay, handoff, 30_000);
    takeCounts(server, 0, r.counts);
    mark('connectionsBack');
    recordUpgrade(server, handoff, r, boot);
    const ids = r.connections.map((c) => c.id);
    if (handoff.fdStore && !store) leaveStore(log, ids);
  }
  log.info({ ktls: support, generation: server.generation }, 'ready');
  const serving = `serving ${server.listeners.length} listener(s), ${server.live.size} connection(s)`;
  notes.ready(handoff ? `${serving}; upgraded in place to generation ${server.generation}` : serving);

  let closing: Promise<void> | undefined;
  return {
    address,
    describeKtls() {
      if (config.ktls === 'off') return 'off (--ktls off): connections use the userspace record layer';
      if (!support.available) return `unavailable (${support.reason})`;
      const list = (v: 'TLSv1.2' | 'TLSv1.3') => (support.ciphers[v].length ? support.ciphers[v].join(', ') : 'none');
      return `${config.ktls}; TLS 1.3: ${list('TLSv1.3')}; TLS 1.2: ${list('TLSv1.2')}; KeyUpdate rekey: ${support.rekey ? 'yes' : 'no'}`;
    },
    close() {
      closing ??= (async () => {
        notes.stopping(`stopping: closing ${server.live.size} connection(s)`);
        try {
          await controls.close();
          await server.close();
        } finally {
          poller.close();
        }
      })();
      return closing;
    },
  };
}

/**
 * After a crash: the connections systemd's fd store handed back. Kernel-mode ones carry on (their TLS
 * state is in the kernel); the rest are closed and counted. New connections are numbered after them.
 */
function resumeStored(server: ProxyServer, groups: Map<string, number[]>, store: FdStore | undefined): void {
  const log = server.deps.logger;
  // fd_store turned off since: the entries still have to leave the store.
  const cleanup = store ?? storeForCleanup(log);
  if (!cleanup) {
    log.warn(`${groups.size} connection(s) were passed as from an fd store, but the store cannot be reached (NOTIFY_SOCKET); closed them`);
    for (const fds of groups.values()) for (const fd of fds) sys.close(fd);
    return;
  }
  const r = restartFromStore(groups, {
    store: cleanup,
    resume: store !== undefined,
    adopt: (info, clientFd, backendFd, carried, stored) => server.deps.relay.add(info, clientFd, backendFd, { mode: 'kernel' }, carried.pair, stored),
    poller: server.deps.poller,
    log,
  });
  server.adoptRelayed(r.resumed);
  server.idsAfter(r.highestId);
  server.count('fd_store_resumed', r.resumed.length);
  for (const [cause, n] of [
    ['not_resumable', r.notResumable.length],
    ['restore_failed', r.failed.length],
  ] as const) {
    if (n === 0) continue;
    server.count('connections_closed', n);
    server.count(counter.closed(cause), n);
  }
  log.info(
    { resumed: r.resumed.length, notResumable: r.notResumable.length, failed: r.failed.length },
    `fd store: resumed ${r.resumed.length} connection(s), closed ${r.notResumable.length} that cannot resume and ${r.failed.length} that did not check out`,
  );
}

/** The previous image kept connections in the fd store and this one does not (fd_store turned off): take them out. */
function leaveStore(log: Logger, ids: string[]): void {
  const store = storeForCleanup(log);
  if (!store) return;
  for (const name of [LISTENER_FDNAME, ...ids.map(connectionFdName)]) {
    try {
      store.remove(name);
    } catch (e) {
      log.warn(`could not take ${name} out of the fd store: ${(e as Error).message}`);
    }
  }
}

/** The fd store at NOTIFY_SOCKET even with fd_store off, to take out what an earlier run left there; undefined (logged) when unusable. */
function storeForCleanup(log: Logger): FdStore | undefined {
  try {
    return FdStore.fromEnv();
  } catch (e) {
    log.warn(`NOTIFY_SOCKET cannot be used to clean up the fd store: ${(e as Error).message}`);
    return undefined;
  }
}

/** Records the upgrade's outcome once the connections are back: status, counters, one log line. */
function recordUpgrade(server: ProxyServer, h: HandoffState, r: Reclaimed, bootMs: Record<string, number>): void {
  const log = server.deps.logger;
  if (r.error) log.error({ err: r.error }, `taking connections back from the upgrade bridge: ${r.error}`);
  for (const f of r.failed) log.warn({ conn: f.id }, `cannot restore connection: ${f.reason}; closed it`);
  server.adoptRelayed(r.connections);
  if (r.failed.length) server.count('upgrade_restore_failed', r.failed.length);
  const breakdown = { intoBridge: Math.max(h.intoBridgeMs, r.intoBridgeMs), outOfBridge: r.outOfBridgeMs, bridgeHeldMs: Date.now() - h.execAt };
  const u = {
    attempt: h.attempt,
    ok: true,
    at: new Date().toISOString(),
    moved: r.connections.length,
    failedToRestore: r.failed.length,
    closedDuringUpgrade: r.closed.length,
    closedDuringUpgradeWithWarning: r.closed.filter((c) => c.level === 'warn').length,
    stallMs: Math.max(breakdown.intoBridge, breakdown.outOfBridge),
  };
  server.recordUpgrade(u);
  log.info(
    {
      generation: server.generation,
      moved: u.moved,
      failedToRestore: u.failedToRestore,
      closedDuringUpgrade: u.closedDuringUpgrade,
      closedDuringUpgradeWithWarning: u.closedDuringUpgradeWithWarning,
      stallMs: u.stallMs,
      stallBreakdownMs: breakdown,
      bootMs,
    },
    'upgrade complete: connections resumed',
  );
}
