// Starts the proxy — fresh, or continuing a previous image's connections after exec — and serves the admin socket.
import dns from 'node:dns/promises';
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import crypto from 'node:crypto';
import type { Logger } from '../admin/log.js';
import { startAdminServer, type AdminServer } from '../admin/server.js';
import { sys } from '../kernel/libc.js';
import { Poller } from '../kernel/poller.js';
import { probeKernel, type KernelProbe } from '../kernel/probe.js';
import { formatEndpoint, type Endpoint } from '../kernel/sockaddr.js';
import { SUITES } from '../record/suites.js';
import { Relay } from '../relay/relay.js';
import type { Reclaimed } from '../relay/protocol.js';
import { RELAY_WORKER, resumeFromBridge, takeHandoff } from '../upgrade/resume.js';
import type { HandoffState } from '../upgrade/state.js';
import { checkListener } from '../upgrade/restore.js';
import { upgradeInPlace } from '../upgrade/upgrade.js';
import { ProxyServer } from './server.js';
import type { KtlsSupport, ProxyConfig } from './types.js';

export interface ProxyHandle {
  close(): Promise<void>;
  describeKtls(): string;
  /** Resolved listening address (useful with port 0). */
  readonly address: string;
}

export class StartupError extends Error {
  constructor(
    message: string,
    readonly code: 'KTLS_REQUIRED' | 'LISTEN' | 'CERT' | 'ADMIN',
  ) {
    super(message);
  }
}

async function resolveEndpoint(ep: { host: string; port: number }): Promise<Endpoint> {
  if (net.isIP(ep.host)) return ep;
  const r = await dns.lookup(ep.host);
  return { host: r.address, port: ep.port };
}

function ktlsSupport(probe: KernelProbe): KtlsSupport {
  const names = (v: 'TLSv1.2' | 'TLSv1.3') => SUITES.filter((s) => s.version === v && probe.accepted[v].includes(s.kernelCipherType)).map((s) => s.name);
  return { available: probe.available, reason: probe.reason, ciphers: { 'TLSv1.2': names('TLSv1.2'), 'TLSv1.3': names('TLSv1.3') }, rekey: probe.rekey };
}

function sameEndpoint(carried: string, want: Endpoint): boolean {
  const w = formatEndpoint(want);
  return want.port === 0 ? carried.replace(/:\d+$/, '') === w.replace(/:\d+$/, '') : carried === w;
}

export async function startProxy(config: ProxyConfig, deps: { logger: Logger }): Promise<ProxyHandle> {
  const log = deps.logger;
  // After exec: what the previous image handed over (its connections wait in the upgrade bridge).
  const handoff = takeHandoff();
  const probe = handoff?.probe ?? probeKernel();
  const support = ktlsSupport(probe);
  if (config.ktls === 'require' && !probe.available) {
    throw new StartupError(`--ktls require: this kernel cannot take TLS sessions: ${probe.reason}`, 'KTLS_REQUIRED');
  }
  const kernelSuites = new Set(config.ktls === 'off' ? [] : [...support.ciphers['TLSv1.2'], ...support.ciphers['TLSv1.3']]);
  // Offer only what can be carried after the handshake: with `require`, what the kernel accepted.
  const offered = config.ktls === 'require' ? SUITES.filter((s) => kernelSuites.has(s.name)) : SUITES;
  let tlsOptions: tls.SecureContextOptions;
  try {
    tlsOptions = {
      cert: fs.readFileSync(config.certFile),
      key: fs.readFileSync(config.keyFile),
      minVersion: 'TLSv1.2',
      ciphers: offered.map((s) => s.name).join(':'),
      secureOptions: crypto.constants.SSL_OP_NO_RENEGOTIATION,
    };
    tls.createSecureContext(tlsOptions); // fails here, before anything starts, on a bad certificate or key
  } catch (e) {
    throw new StartupError(`certificate ${config.certFile} / key ${config.keyFile}: ${(e as Error).message}`, 'CERT');
  }
  const backend = await resolveEndpoint(config.backend);
  const listenAt = await resolveEndpoint(config.listen);
  const poller = new Poller();
  const stagger = handoff !== undefined;
  const relay = new Relay({ idleTimeoutMs: config.idleTimeoutMs, workerUrl: RELAY_WORKER, shards: config.workers, stagger });
  const handshake = {
    tls: tlsOptions,
    backend,
    policy: config.ktls,
    kernelSuites: [...kernelSuites],
    handshakeTimeoutMs: config.handshakeTimeoutMs,
    backendConnectTimeoutMs: config.backendConnectTimeoutMs,
    logLevel: config.logLevel,
  };
  const server = new ProxyServer({ config, logger: log, poller, relay, handshake, staggerWorkers: stagger, backend, probe, support, kernelSuites });
  (tlsOptions.key as Buffer).fill(0); // the handshake workers have their copies
  server.pauseAccepting();

  if (handoff) continueFrom(server, handoff);
  try {
    const carried = handoff?.listeners.find((l) => sameEndpoint(l.address, listenAt));
    for (const l of handoff?.listeners ?? []) if (l !== carried) sys.close(l.fd);
    if (carried) {
      const bad = checkListener(carried);
      if (bad) throw new Error(`carried listener: ${bad}`);
    }
    server.listen(listenAt, carried?.fd);
  } catch (e) {
    poller.close();
    await relay.stop();
    throw new StartupError((e as Error).message, 'LISTEN');
  }
  if (handoff) {
    // Now that this image is ready, its connections come back from the bridge (which relayed them meanwhile).
    const r = await resumeFromBridge(relay, handoff, 30_000);
    recordUpgrade(server, handoff, r);
  }
  await server.started; // every worker thread is up: ready means ready
  server.resumeAccepting();

  const upgrade = (attempt?: string) => upgradeInPlace(server, { handshakeBoundMs: Math.min(config.handshakeTimeoutMs, 5000) }, attempt);
  const onUsr2 = () => void upgrade();
  process.on('SIGUSR2', onUsr2);

  let admin: AdminServer;
  try {
    admin = await startAdminServer(
      config.adminSocket,
      {
        status: () => server.status(),
        // What `ironsocket upgrade` polls across the exec: cheap, unlike a full status with every connection.
        'upgrade-result': () => ({ pid: process.pid, generation: server.generation, lastUpgrade: server.lastUpgrade }),
        upgrade: () => {
          const attempt = crypto.randomBytes(6).toString('hex');
          // Answer first; the upgrade (and exec) follow once the reply is on its way.
          setTimeout(() => void upgrade(attempt), 50);
          return { attempt, generation: server.generation, pid: process.pid };
        },
      },
      { logger: log },
    );
  } catch (e) {
    await server.close();
    poller.close();
    throw new StartupError(`admin socket ${config.adminSocket}: ${(e as Error).message}`, 'ADMIN');
  }
  const address = server.listeners[0]!.address;
  log.info({ listen: address, backend: formatEndpoint(backend), ktls: support, generation: server.generation }, 'listening');

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
        process.off('SIGUSR2', onUsr2);
        await admin.close();
        await server.close();
        poller.close();
      })();
      return closing;
    },
  };
}

/** Continues the previous image's identity: generation, start time, connection ids, counters. */
function continueFrom(server: ProxyServer, h: HandoffState): void {
  server.generation = h.generation;
  server.startedAt = h.startedAt;
  server.nextId = h.nextId;
  Object.assign(server.counters, h.counters);
}

/** Records the upgrade's outcome once the connections are back: status, counters, one log line. */
function recordUpgrade(server: ProxyServer, h: HandoffState, r: Reclaimed): void {
  const log = server.deps.logger;
  if (r.error) log.error({ err: r.error }, `taking connections back from the upgrade bridge: ${r.error}`);
  for (const f of r.failed) log.warn({ conn: f.id }, `cannot restore connection: ${f.reason}; closed it`);
  server.adoptRelayed(r.connections);
  if (r.failed.length) server.count('upgrade_restore_failed', r.failed.length);
  const breakdown = { intoBridge: Math.max(h.intoBridgeMs, r.intoBridgeMs), outOfBridge: r.outOfBridgeMs, bridgeHeldMs: Date.now() - h.execAt };
  server.lastUpgrade = {
    attempt: h.attempt,
    ok: true,
    at: new Date().toISOString(),
    moved: r.connections.length,
    failedToRestore: r.failed.length,
    closedDuringUpgrade: r.closed.length,
    stallMs: Math.max(breakdown.intoBridge, breakdown.outOfBridge),
  };
  const u = server.lastUpgrade;
  log.info(
    {
      generation: server.generation,
      moved: u.moved,
      failedToRestore: u.failedToRestore,
      closedDuringUpgrade: u.closedDuringUpgrade,
      stallMs: u.stallMs,
      stallBreakdownMs: breakdown,
    },
    'upgrade complete: connections resumed',
  );
}
