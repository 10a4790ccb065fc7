// The operator's handles on a running proxy: signals (SIGUSR2 upgrade, SIGHUP reload) and the admin socket's commands.
import crypto from 'node:crypto';
import type { Logger } from '../core/log.js';
import { startAdminServer, type AdminServer } from '../admin/server.js';
import { startMetricsServer, type MetricsServer } from '../metrics/server.js';
import { upgradeInPlace } from '../carry/upgrade.js';
import type { TlsBase } from '../edge/listener-setup.js';
import { reloadConfig } from './reload.js';
import type { ProxyServer } from './server.js';
import type { ServiceNotes } from '../service/systemd.js';
import type { ProxyConfig, ReloadOutcome } from '../core/types.js';

export interface ControlOptions {
  server: ProxyServer;
  logger: Logger;
  tlsBase: TlsBase;
  /** Reads the configuration again (same file, same flags) for a reload; without it, reload is refused. */
  reloadConfig?: () => Promise<ProxyConfig>;
  /** Told around reloads and upgrades (systemd: RELOADING=1, then READY=1). */
  notes?: ServiceNotes;
}

export interface Controls {
  close(): Promise<void>;
  reload(): Promise<ReloadOutcome>;
}

export class ControlError extends Error {}

export async function startControls(opts: ControlOptions): Promise<Controls> {
  const { server, logger: log } = opts;
  const config = server.deps.config;
  let upgrading = false;
  let reloading: Promise<ReloadOutcome> | undefined;

  const upgrade = async (attempt?: string) => {
    if (reloading) await reloading.catch(() => undefined);
    upgrading = true;
    opts.notes?.reloading('upgrading in place');
    try {
      // A connection still in its handshake or backend connect cannot be carried (OpenSSL's state is in this
      // process): wait for it as long as it may take anyway, so an upgrade never cuts a client that is still in time.
      const boundMs = config.handshakeTimeoutMs + config.backendConnectTimeoutMs;
      const r = await upgradeInPlace(server, { handshakeBoundMs: boundMs }, attempt);
      // Still here: the upgrade did not happen, and this image serves on.
      opts.notes?.ready(`upgrade failed (${r.error ?? 'unknown'}); serving on generation ${server.generation}`);
      return r;
    } finally {
      upgrading = false;
    }
  };

  const reload = (): Promise<ReloadOutcome> => {
    if (upgrading) return Promise.resolve({ ok: false, at: new Date().toISOString(), error: 'an upgrade is in progress' });
    reloading ??= (async () => {
      opts.notes?.reloading('reloading the configuration');
      let outcome: ReloadOutcome;
      try {
        if (!opts.reloadConfig) throw new ControlError('this proxy was started without a way to read its configuration again');
        outcome = await reloadConfig(server, await opts.reloadConfig(), opts.tlsBase);
      } catch (e) {
        outcome = { ok: false, at: new Date().toISOString(), error: (e as Error).message };
      }
      server.count(outcome.ok ? 'reloads' : 'reloads_failed');
      server.recordReload(outcome);
      if (outcome.ok) {
        log.info({ listeners: outcome.listeners, needsUpgrade: outcome.needsUpgrade }, 'reloaded: new connections use the new configuration');
        if (outcome.needsUpgrade?.length)
          log.warn(`changed settings that apply only after an upgrade (ironsocket upgrade): ${outcome.needsUpgrade.join(', ')}`);
      } else {
        log.error({ err: outcome.error }, `reload refused, the running configuration is unchanged: ${outcome.error}`);
      }
      opts.notes?.ready(
        outcome.ok ? `reloaded; serving ${server.listeners.length} listener(s)` : `reload refused (${outcome.error}); serving the previous configuration`,
      );
      return outcome;
    })().finally(() => (reloading = undefined));
    return reloading;
  };

  const onUsr2 = () => void upgrade();
  const onHup = () => void reload();
  process.on('SIGUSR2', onUsr2);
  process.on('SIGHUP', onHup);

  let admin: AdminServer;
  try {
    admin = await startAdminServer(
      config.adminSocket,
      {
        status: () => server.status(),
        connections: async () => (await server.status()).connections,
        // What `ironsocket upgrade` polls across the exec: cheap, unlike a full status with every connection.
        'upgrade-result': () => ({ pid: process.pid, generation: server.generation, lastUpgrade: server.lastUpgrade }),
        upgrade: () => {
          const attempt = crypto.randomBytes(6).toString('hex');
          // Answer first; the upgrade (and exec) follow once the reply is on its way.
          setTimeout(() => void upgrade(attempt), 50);
          return { attempt, generation: server.generation, pid: process.pid };
        },
        reload: () => reload(),
      },
      { logger: log },
    );
  } catch (e) {
    process.off('SIGUSR2', onUsr2);
    process.off('SIGHUP', onHup);
    throw new ControlError(`admin socket ${config.adminSocket}: ${(e as Error).message}`);
  }
  let metrics: MetricsServer | undefined;
  if (config.metrics) {
    try {
      // Loaded only when configured: prom-client and what it imports are a third of the files a start would read.
      const { createMetrics } = await import('../metrics/metrics.js');
      metrics = await startMetricsServer(
        config.metrics,
        createMetrics(() => server.metricsSnapshot()),
        log,
      );
      log.info({ metrics: `http://${metrics.address}/metrics` }, 'serving metrics');
    } catch (e) {
      process.off('SIGUSR2', onUsr2);
      process.off('SIGHUP', onHup);
      await admin.close();
      throw new ControlError((e as Error).message);
    }
  }
  return {
    reload,
    async close() {
      process.off('SIGUSR2', onUsr2);
      process.off('SIGHUP', onHup);
      await metrics?.close();
      await admin.close();
    },
  };
}
