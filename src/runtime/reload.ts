// Hot reload (SIGHUP, `ironsocket reload`): new certificates, backends and listeners without exec and without touching live connections.
import { transparentProblem } from './capabilities.js';
import { formatHostPort } from '../config/schema.js';
import { prepareAll, resolveEndpoint, wipeListeners, type HandshakeListener, type TlsBase } from '../edge/listener-setup.js';
import type { Listener } from '../edge/listener.js';
import type { ProxyConfig, ReloadOutcome } from '../core/types.js';
import type { Logger } from '../core/log.js';
import type { Endpoint } from '../kernel/sockaddr.js';
import type { Relay } from '../relay/relay.js';
import type { ReloadTimeouts } from '../edge/handshakers.js';
import { discardPrepared, prepareTickets, type PreparedTickets, type SessionTickets } from '../edge/session-tickets.js';

/** What a reload needs of the running server, nothing more (runtime/server.ts's ProxyServer is one). */
export interface ReloadTarget {
  readonly deps: {
    readonly config: ProxyConfig;
    readonly logger: Logger;
    readonly relay: Pick<Relay, 'configure'>;
    readonly tickets: Pick<SessionTickets, 'commit'>;
  };
  /** Bound sockets, in the order of `config.listeners`. */
  readonly listeners: readonly Listener[];
  /** What each listener serves from now on. */
  setServed(served: HandshakeListener[]): void;
  bind(at: Endpoint): Listener;
  reloadHandshakes(served: HandshakeListener[], timeouts: ReloadTimeouts): Promise<void>;
  serve(bound: Listener[]): void;
}

/** Settings a running image cannot change in place; an in-place upgrade re-reads them. */
const UPGRADE_ONLY = ['workers', 'adminSocket', 'ktls', 'metrics', 'user', 'group', 'logLevel', 'fdStore'] as const;

/**
 * Applies `next` to the running server. Everything is checked and every new address bound before
 * anything changes; on any failure the old configuration keeps running untouched.
 */
export async function reloadConfig(server: ReloadTarget, next: ProxyConfig, base: TlsBase): Promise<ReloadOutcome> {
  const at = new Date().toISOString();
  const current = server.deps.config;
  const capProblem = transparentProblem(next);
  if (capProblem) return { ok: false, at, error: capProblem };
  let served: HandshakeListener[];
  try {
    served = await prepareAll(next, base, (message, file) => server.deps.logger.warn({ file }, message));
  } catch (e) {
    return { ok: false, at, error: (e as Error).message };
  }
  // The session ticket key file is read again (the operator rotates by editing it); a bad one refuses the reload.
  let tickets: PreparedTickets;
  try {
    tickets = await prepareTickets(next.sessionTickets);
  } catch (e) {
    wipeListeners(served);
    return { ok: false, at, error: (e as Error).message };
  }
  if (tickets.warning) server.deps.logger.warn({ file: next.sessionTickets.keyFile }, tickets.warning);
  const fresh: Listener[] = [];
  const bound: Listener[] = [];
  try {
    const taken = new Set<number>();
    for (const l of next.listeners) {
      // Same configured address, same socket (port-0 listeners pair up in order).
      const i = current.listeners.findIndex((c, k) => !taken.has(k) && formatHostPort(c.listen) === formatHostPort(l.listen));
      taken.add(i);
      const kept = i >= 0 ? server.listeners[i] : undefined;
      if (kept) {
        bound.push(kept);
        continue;
      }
      const b = server.bind(await resolveEndpoint(l.listen));
      fresh.push(b);
      bound.push(b);
    }
  } catch (e) {
    for (const b of fresh) b.close();
    wipeListeners(served);
    discardPrepared(tickets);
    return { ok: false, at, error: (e as Error).message };
  }
  // The workers get the new ticket keys first (a message each), then the new listeners, whose contexts take the new lifetime.
  server.deps.tickets.commit(tickets);
  // Workers first: a connection accepted on a new listener must find its settings there.
  await server.reloadHandshakes(served, {
    handshakeTimeoutMs: next.handshakeTimeoutMs,
    backendConnectTimeoutMs: next.backendConnectTimeoutMs,
    backendRetryMs: next.backendRetryMs,
  });
  wipeListeners(served);
  server.setServed(served);
  const needsUpgrade = UPGRADE_ONLY.filter((k) => JSON.stringify(current[k]) !== JSON.stringify(next[k]));
  Object.assign(current, {
    listeners: next.listeners,
    handshakeTimeoutMs: next.handshakeTimeoutMs,
    backendConnectTimeoutMs: next.backendConnectTimeoutMs,
    backendRetryMs: next.backendRetryMs,
    idleTimeoutMs: next.idleTimeoutMs,
    maxConnections: next.maxConnections,
    maxConnectionsPerSource: next.maxConnectionsPerSource,
    maxHandshakesPerSource: next.maxHandshakesPerSource,
    sessionTickets: next.sessionTickets,
  } satisfies Partial<ProxyConfig>);
  server.deps.relay.configure({ idleTimeoutMs: next.idleTimeoutMs });
  server.serve(bound);
  return { ok: true, at, listeners: served.map((s) => s.name), needsUpgrade: needsUpgrade.map(String) };
}
