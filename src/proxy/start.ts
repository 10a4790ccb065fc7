// Starts the proxy: probes the kernel, builds the TLS context, listens, and serves the admin socket.
import dns from 'node:dns/promises';
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import crypto from 'node:crypto';
import type { Logger } from '../admin/log.js';
import { startAdminServer, type AdminServer } from '../admin/server.js';
import { Poller } from '../kernel/poller.js';
import { probeKernel, type KernelProbe } from '../kernel/probe.js';
import { formatEndpoint, type Endpoint } from '../kernel/sockaddr.js';
import { SUITES } from '../record/suites.js';
import { Relay } from '../relay/relay.js';
import { serveConnection, type LiveConnection } from './connection.js';
import { Listener } from './listener.js';
import type { KtlsSupport, ProxyConfig, StatusSnapshot } from './types.js';

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

export async function startProxy(config: ProxyConfig, deps: { logger: Logger }): Promise<ProxyHandle> {
  const log = deps.logger;
  const probe = probeKernel();
  const support = ktlsSupport(probe);
  if (config.ktls === 'require' && !probe.available) {
    throw new StartupError(`--ktls require: this kernel cannot take TLS sessions: ${probe.reason}`, 'KTLS_REQUIRED');
  }
  const kernelSuites = new Set(config.ktls === 'off' ? [] : [...support.ciphers['TLSv1.2'], ...support.ciphers['TLSv1.3']]);
  // Offer only what can be carried after the handshake: with `require`, what the kernel accepted.
  const offered = config.ktls === 'require' ? SUITES.filter((s) => kernelSuites.has(s.name)) : SUITES;
  let secureContext: tls.SecureContext;
  try {
    secureContext = tls.createSecureContext({
      cert: fs.readFileSync(config.certFile),
      key: fs.readFileSync(config.keyFile),
      minVersion: 'TLSv1.2',
      ciphers: offered.map((s) => s.name).join(':'),
      secureOptions: crypto.constants.SSL_OP_NO_RENEGOTIATION,
    });
  } catch (e) {
    throw new StartupError(`certificate ${config.certFile} / key ${config.keyFile}: ${(e as Error).message}`, 'CERT');
  }
  const backend = await resolveEndpoint(config.backend);
  const listenAt = await resolveEndpoint(config.listen);
  const poller = new Poller();
  const relay = new Relay({ idleTimeoutMs: config.idleTimeoutMs });
  const counters: Record<string, number> = {};
  const count = (name: string) => {
    counters[name] = (counters[name] ?? 0) + 1;
  };
  const live = new Map<string, LiveConnection>();
  let inFlight = 0; // accepted, not yet relayed
  let nextId = 1;
  const startedAt = new Date();
  let listener: Listener | undefined;

  const atCapacity = () => live.size + inFlight >= config.maxConnections;
  const recheckCapacity = () => {
    if (!atCapacity()) listener?.resume();
  };

  relay.on('closed', (m) => {
    live.delete(m.id);
    count('connections_closed');
    log[m.level]({ conn: m.id, bytesIn: m.bytesIn, bytesOut: m.bytesOut }, `closed: ${m.reason}`);
    recheckCapacity();
  });
  relay.on('log', (m) => log[m.level]({ conn: m.id }, m.msg));
  relay.on('error', (e) => log.fatal({ err: e.message }, `relay worker failed: ${e.message}`));

  const ctx = {
    poller,
    relay,
    logger: log,
    secureContext,
    backend,
    policy: config.ktls,
    kernelSuites,
    handshakeTimeoutMs: config.handshakeTimeoutMs,
    backendConnectTimeoutMs: config.backendConnectTimeoutMs,
    count,
    established(c: LiveConnection) {
      inFlight--;
      live.set(c.id, c);
    },
    gone() {
      inFlight--;
      recheckCapacity();
    },
  };

  try {
    listener = new Listener(poller, {
      endpoint: listenAt,
      onConnection(fd) {
        inFlight++;
        count('connections_accepted');
        void serveConnection(ctx, fd, `c${nextId++}`);
        if (atCapacity()) {
          log.warn(`at max_connections (${config.maxConnections}); new clients wait in the backlog`);
          listener!.pause();
        }
      },
      onError(message) {
        log.error(message);
      },
    });
  } catch (e) {
    poller.close();
    await relay.stop();
    throw new StartupError((e as Error).message, 'LISTEN');
  }

  const status = async (): Promise<StatusSnapshot> => {
    const stats = new Map((await relay.stats()).map((s) => [s.id, s]));
    const now = Date.now();
    return {
      pid: process.pid,
      version: process.env.npm_package_version ?? '0.1.0',
      startedAt: startedAt.toISOString(),
      ktls: { ...support, policy: config.ktls },
      listeners: [{ address: listener!.address, backend: formatEndpoint(backend) }],
      connections: [...live.values()].map((c) => ({
        id: c.id,
        client: c.client,
        backend: c.backend,
        version: c.version,
        cipher: c.cipher,
        mode: c.mode,
        bytesIn: stats.get(c.id)?.bytesIn ?? 0,
        bytesOut: stats.get(c.id)?.bytesOut ?? 0,
        ageMs: now - c.startedAt,
      })),
      counters: { ...counters, connections_live: live.size, handshakes_in_progress: inFlight },
    };
  };

  let admin: AdminServer;
  try {
    admin = await startAdminServer(config.adminSocket, { status }, { logger: log });
  } catch (e) {
    listener.close();
    poller.close();
    await relay.stop();
    throw new StartupError(`admin socket ${config.adminSocket}: ${(e as Error).message}`, 'ADMIN');
  }
  log.info({ listen: listener.address, backend: formatEndpoint(backend), ktls: support }, 'listening');

  let closing: Promise<void> | undefined;
  return {
    address: listener.address,
    describeKtls() {
      if (config.ktls === 'off') return 'off (--ktls off): connections use the userspace record layer';
      if (!support.available) return `unavailable (${support.reason})`;
      const list = (v: 'TLSv1.2' | 'TLSv1.3') => (support.ciphers[v].length ? support.ciphers[v].join(', ') : 'none');
      return `${config.ktls}; TLS 1.3: ${list('TLSv1.3')}; TLS 1.2: ${list('TLSv1.2')}; KeyUpdate rekey: ${support.rekey ? 'yes' : 'no'}`;
    },
    close() {
      closing ??= (async () => {
        listener!.close();
        await admin.close();
        await relay.stop();
        poller.close();
      })();
      return closing;
    },
  };
}
