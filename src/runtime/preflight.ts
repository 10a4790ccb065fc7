// Everything `run` checks before it binds a socket, in one function: `ironsocket check` calls it too, so check accepts only what run accepts.
import { KEYLOG_ENV, keylogFileFromEnv, keylogFileProblem, openKeylogFile } from '../handshake/keylog-file.js';
import type { KernelProbe } from '../kernel/probe.js';
import type { Endpoint } from '../kernel/sockaddr.js';
import { SUITES } from '../record/suites.js';
import { prepareAll, resolveEndpoint, wipeListeners, type HandshakeListener, type SetupWarn, type TlsBase } from '../edge/listener-setup.js';
import { discardPrepared, prepareTickets, type PreparedTickets } from '../edge/session-tickets.js';
import { transparentProblem } from './capabilities.js';
import { identityOf, switchProblem, type Identity } from './privileges.js';
import type { KtlsSupport, ProxyConfig } from '../core/types.js';

export class StartupError extends Error {
  constructor(
    message: string,
    readonly code: 'KTLS_REQUIRED' | 'LISTEN' | 'CERT' | 'TICKETS' | 'ADMIN' | 'PRIVILEGES' | 'KEYLOG',
  ) {
    super(message);
  }
}

/** What passed: the caller owns the private keys in `served` and the key file's keys in `tickets` (discardPreflight). */
export interface Preflight {
  support: KtlsSupport;
  /** The suites the kernel can take over under the ktls policy (none with `off`). */
  kernelSuites: Set<string>;
  tlsBase: TlsBase;
  /** Who the proxy runs as once bound (`user`/`group`), when they are set. */
  identity?: Identity;
  keylogFile?: string;
  /** Every listener with its certificates, keys, CA and CRL read and checked, and its backends resolved. */
  served: HandshakeListener[];
  tickets: PreparedTickets;
  /** Every listener's address, resolved, in config order. */
  endpoints: Endpoint[];
}

export interface PreflightOptions {
  probe: KernelProbe;
  /** Hears each warning that does not stop a start (a key others can read, an expired CRL), once per file. */
  warn: SetupWarn;
  /**
   * For `check`: nothing is created (the key log file is only checked), and a switch to `user` that needs root is a
   * warning, not a refusal: check may run as anyone, `run` is started as root to drop to `user`.
   */
  dryRun?: boolean;
}

/** What `check` assumes of the kernel when the ktls policy does not depend on it (auto, off): run probes at start. */
export const UNPROBED: KernelProbe = { available: false, reason: 'not probed', accepted: { 'TLSv1.2': [], 'TLSv1.3': [] }, rekey: false };

function ktlsSupport(probe: KernelProbe): KtlsSupport {
  const names = (v: 'TLSv1.2' | 'TLSv1.3') => SUITES.filter((s) => s.version === v && probe.accepted[v].includes(s.kernelCipherType)).map((s) => s.name);
  return { available: probe.available, reason: probe.reason, ciphers: { 'TLSv1.2': names('TLSv1.2'), 'TLSv1.3': names('TLSv1.3') }, rekey: probe.rekey };
}

/** Zeroes the keys a preflight read (when they are not going to be served). */
export function discardPreflight(p: Preflight): void {
  wipeListeners(p.served);
  discardPrepared(p.tickets);
}

/** Checks and reads, in run's order, everything a start needs short of its sockets; throws StartupError with the first problem. */
export async function preflight(config: ProxyConfig, opts: PreflightOptions): Promise<Preflight> {
  const { probe, warn, dryRun = false } = opts;
  const support = ktlsSupport(probe);
  if (config.ktls === 'require' && !probe.available) {
    throw new StartupError(`--ktls require: this kernel cannot take TLS sessions: ${probe.reason}`, 'KTLS_REQUIRED');
  }
  const capProblem = transparentProblem(config);
  if (capProblem) throw new StartupError(capProblem, 'PRIVILEGES');
  let identity: Identity | undefined;
  try {
    identity = identityOf(config);
  } catch (e) {
    throw new StartupError((e as Error).message, 'PRIVILEGES');
  }
  const cannotSwitch = identity && switchProblem(identity);
  if (cannotSwitch && !dryRun) throw new StartupError(cannotSwitch, 'PRIVILEGES');
  if (cannotSwitch) warn(`${cannotSwitch}: run must be started as root to switch`, 'user/group');

  const kernelSuites = new Set(config.ktls === 'off' ? [] : [...support.ciphers['TLSv1.2'], ...support.ciphers['TLSv1.3']]);
  // Offer only what can be carried after the handshake: with `require`, what the kernel accepted.
  const offered = config.ktls === 'require' ? SUITES.filter((s) => kernelSuites.has(s.name)) : SUITES;
  const tlsBase: TlsBase = { minVersion: 'TLSv1.2', ciphers: offered.map((s) => s.name).join(':'), noRenegotiation: true };
  // Debug switch only: with it, every session can be decrypted by whoever reads the file.
  const keylogFile = keylogFileFromEnv();
  if (keylogFile !== undefined) {
    let refused: string | undefined;
    if (dryRun) refused = keylogFileProblem(keylogFile);
    else {
      try {
        openKeylogFile(keylogFile).close(); // created 0600 now, so that a path that cannot be written stops the start
      } catch (e) {
        refused = (e as Error).message;
      }
    }
    if (refused !== undefined) throw new StartupError(`${KEYLOG_ENV}=${keylogFile}: ${refused}`, 'KEYLOG');
  }
  let served: HandshakeListener[];
  try {
    served = await prepareAll(config, tlsBase, warn);
  } catch (e) {
    throw new StartupError((e as Error).message, 'CERT');
  }
  let tickets: PreparedTickets;
  try {
    tickets = await prepareTickets(config.sessionTickets);
  } catch (e) {
    wipeListeners(served);
    throw new StartupError((e as Error).message, 'TICKETS');
  }
  if (tickets.warning) warn(tickets.warning, config.sessionTickets.keyFile!);
  let endpoints: Endpoint[];
  try {
    endpoints = await Promise.all(config.listeners.map((l) => resolveEndpoint(l.listen)));
  } catch (e) {
    wipeListeners(served);
    discardPrepared(tickets);
    throw new StartupError((e as Error).message, 'LISTEN');
  }
  return { support, kernelSuites, tlsBase, identity, keylogFile, served, tickets, endpoints };
}
