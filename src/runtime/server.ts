// The running proxy's state: listeners, in-progress handshakes, live connections and counters, with the hooks an upgrade needs.
import type { Logger } from '../core/log.js';
import type { Poller } from '../kernel/poller.js';
import type { KernelProbe } from '../kernel/probe.js';
import { formatEndpoint, type Endpoint } from '../kernel/sockaddr.js';
import type { HandshakeListener } from '../edge/listener-setup.js';
import { servableByBridge, type DoorOrder } from '../carry/door.js';
import { doorOrderOf } from './door-order.js';
import type { MetricsSnapshot } from '../metrics/metrics.js';
import { metricsSnapshot, statusSnapshot } from './snapshots.js';
import type { Relay } from '../relay/relay.js';
import { SOL_SOCKET, SO_LINGER, sys } from '../kernel/libc.js';
import { RejectionNotes, SourceCounts, sourceOf, sourceOfClient } from '../edge/per-source.js';
import { LISTENER_FDNAME, connectionFdName, type FdStore } from '../service/fd-store.js';
import { Handshakers, type HandshakerInit, type ReloadTimeouts } from '../edge/handshakers.js';
import type { CarriedTickets, SessionTickets } from '../edge/session-tickets.js';
import { Listener } from '../edge/listener.js';
import type { KtlsSupport, ProxyConfig, ReloadOutcome, StatusSnapshot, UpgradeRecord } from '../core/types.js';
import type { ConnectionInfo } from '../core/connection.js';
import { counter, type CounterName, type SourceLimit } from '../core/counters.js';

/** struct linger { l_onoff = 1; l_linger = 0 }: close() resets the connection. */
const LINGER_ABORT = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

export interface ServerDeps {
  config: ProxyConfig;
  logger: Logger;
  poller: Poller;
  relay: Relay;
  /** Start worker threads one at a time (after an upgrade's exec, while the bridge relays). */
  staggerWorkers?: boolean;
  /** What every handshake worker needs (certificate and key included). */
  handshake: HandshakerInit;
  probe: KernelProbe;
  support: KtlsSupport;
  kernelSuites: Set<string>;
  /** systemd's fd store (fd_store on): listeners are kept there; the relay workers keep connections there. */
  store?: FdStore;
  /** The process's session ticket keys: every handshake worker gets each new set. */
  tickets: SessionTickets;
}

export class ProxyServer {
  readonly counters: Record<string, number> = {};
  /**
   * The same counters per listener name, for what was counted with its listener known (accepts, connections, closes,
   * bytes): /metrics labels them. What no listener was known for stays in `counters` only. Carried across upgrades.
   */
  readonly listenerCounters = new Map<string, Record<string, number>>();
  readonly live = new Map<string, ConnectionInfo>();
  /** Accepted connections still in handshake or backend connect (in a handshake worker). */
  readonly inFlight = new Set<string>();
  /** Open connections per source address (IPv4) or /64 (IPv6), for the per-source limits. */
  readonly sources = new SourceCounts();
  /** Bounds the log lines about rejected connections (per limit), whatever the flood. */
  private readonly rejections: Record<SourceLimit, RejectionNotes>;
  /** Bound sockets, in the order of `config.listeners` (a connection carries its listener's index). */
  readonly listeners: Listener[] = [];
  /** What each listener serves, for status (same order): set by start and by reload. */
  private servedNow: HandshakeListener[] = [];
  /** Which image this is, since when the proxy runs, the next connection id: continued across an upgrade's exec. */
  private identity = { generation: 1, startedAt: new Date().toISOString(), nextId: 1 };
  private upgradeOutcome: UpgradeRecord | undefined;
  private reloadOutcome: ReloadOutcome | undefined;
  private accepting = true;
  private readonly handshakers: Handshakers;
  /** Resolves once every handshake and relay worker has loaded. */
  readonly started: Promise<void>;

  constructor(readonly deps: ServerDeps) {
    const { relay, logger: log } = deps;
    const warn = (limit: SourceLimit) => new RejectionNotes((line) => log.warn({ limit }, line));
    this.rejections = { connections: warn('connections'), handshakes: warn('handshakes') };
    relay.on('closed', (m) => {
      // The bridge cannot reach the store (NotifyAccess=main): what ended there leaves it now.
      if (m.elsewhere) this.unstore(connectionFdName(m.id));
      // Who and where, from the connection's ConnectionInfo as the relay held it (also for one that ended in the bridge).
      const { client, listener } = m;
      this.live.delete(m.id);
      this.sources.closed(m.id);
      this.count('connections_closed', 1, listener);
      this.count(counter.closed(m.cause), 1, listener);
      // Bytes of closed connections; live ones are added at scrape time (metricsSnapshot).
      this.count('bytes_in', m.bytesIn, listener);
      this.count('bytes_out', m.bytesOut, listener);
      log[m.level]({ conn: m.id, client, listener, bytesIn: m.bytesIn, bytesOut: m.bytesOut }, `closed: ${m.reason}`);
      this.recheckCapacity();
    });
    relay.on('log', (m) => log[m.level]({ conn: m.id }, m.msg));
    relay.on('error', (e) => log.fatal({ err: e.message }, `relay worker failed: ${e.message}`));
    this.handshakers = new Handshakers(
      deps.config.workers,
      deps.handshake,
      {
        established: (m) => {
          this.inFlight.delete(m.info.id);
          this.sources.established(m.info.id);
          this.live.set(m.info.id, m.info);
          this.count(counter.connections(m.info.mode), 1, m.info.listener);
          relay.add(m.info, m.clientFd, m.backendFd, m.records);
        },
        gone: (id) => {
          this.inFlight.delete(id);
          this.sources.closed(id);
          this.recheckCapacity();
        },
        count: (name) => this.count(name),
        error: (e) => log.fatal({ err: e.message }, `handshake worker failed: ${e.message}`),
      },
      deps.tickets,
      deps.staggerWorkers ? relay.started : undefined,
    );
    deps.tickets.onChange((why) => {
      this.handshakers.broadcastTickets();
      log.info({ tickets: deps.tickets.status() }, `session ticket keys ${why}: every handshake worker has the new set`);
    });
    this.started = Promise.all([relay.started, this.handshakers.started]).then(() => undefined);
  }

  get served(): readonly HandshakeListener[] {
    return this.servedNow;
  }

  /** What each listener serves from now on (at start, and on a reload). */
  setServed(served: HandshakeListener[]): void {
    this.servedNow = served;
  }

  get generation(): number {
    return this.identity.generation;
  }

  get startedAt(): string {
    return this.identity.startedAt;
  }

  get nextId(): number {
    return this.identity.nextId;
  }

  /** Continues the previous image's identity after an upgrade's exec: generation, start time, connection ids, counters. */
  continueFrom(previous: {
    generation: number;
    startedAt: string;
    nextId: number;
    counters: Record<string, number>;
    listenerCounters?: Record<string, Record<string, number>>;
  }): void {
    this.identity = { generation: previous.generation, startedAt: previous.startedAt, nextId: previous.nextId };
    Object.assign(this.counters, previous.counters);
    for (const [name, c] of Object.entries(previous.listenerCounters ?? {})) this.listenerCounters.set(name, { ...c });
  }

  /** New connection ids start after `highest` (the largest id the fd store handed back after a crash). */
  idsAfter(highest: number): void {
    this.identity.nextId = Math.max(this.identity.nextId, highest + 1);
  }

  get lastUpgrade(): UpgradeRecord | undefined {
    return this.upgradeOutcome;
  }

  /** The outcome of the last upgrade attempt (status and metrics report it). */
  recordUpgrade(r: UpgradeRecord): void {
    this.upgradeOutcome = r;
  }

  get lastReload(): ReloadOutcome | undefined {
    return this.reloadOutcome;
  }

  recordReload(outcome: ReloadOutcome): void {
    this.reloadOutcome = outcome;
  }

  /** Takes an entry out of the fd store (a failure is logged: the entry's peer will not see its close). */
  unstore(name: string): void {
    try {
      this.deps.store?.remove(name);
    } catch (e) {
      this.deps.logger.warn({ entry: name }, `could not take ${name} out of the fd store: ${(e as Error).message}`);
    }
  }

  /** Replaces the listeners kept in the fd store by the ones served now. */
  private storeListeners(): void {
    const store = this.deps.store;
    if (!store) return;
    this.unstore(LISTENER_FDNAME);
    const fds = this.listeners.map((l) => l.fd);
    if (fds.length === 0) return;
    try {
      store.deposit(LISTENER_FDNAME, fds);
    } catch (e) {
      this.deps.logger.warn(`could not keep the listening sockets in the fd store: ${(e as Error).message}`);
    }
  }

  /** Adds to a counter, and to the same counter of `listener` (a name) when the listener is known. */
  count(name: CounterName, by = 1, listener?: string): void {
    this.counters[name] = (this.counters[name] ?? 0) + by;
    if (listener === undefined) return;
    let mine = this.listenerCounters.get(listener);
    if (!mine) this.listenerCounters.set(listener, (mine = {}));
    mine[name] = (mine[name] ?? 0) + by;
  }

  /** A listening socket on `at`, or around an already-listening fd (carried across exec, or from systemd); not yet serving. */
  bind(at: Endpoint, adoptFd?: number): Listener {
    let l: Listener | undefined;
    l = new Listener(this.deps.poller, {
      endpoint: at,
      adoptFd,
      onConnection: (fd) => {
        const i = this.listeners.indexOf(l!);
        if (i < 0) return void sys.close(fd);
        this.accept(fd, i);
      },
      onError: (message) => this.deps.logger.error(message),
    });
    l.pause();
    return l;
  }

  /**
   * Makes `bound` the served listeners, in config order (connections name a listener by its index).
   * Sockets no longer listed are closed; their established connections are not touched.
   */
  serve(bound: Listener[]): void {
    for (const old of this.listeners) if (!bound.includes(old)) old.close();
    this.listeners.splice(0, this.listeners.length, ...bound);
    this.storeListeners();
    for (const l of bound) if (this.accepting && !this.atCapacity()) l.resume();
  }

  private atCapacity(): boolean {
    return this.live.size + this.inFlight.size >= this.deps.config.maxConnections;
  }

  private recheckCapacity(): void {
    if (this.accepting && !this.atCapacity()) for (const l of this.listeners) l.resume();
  }

  private accept(fd: number, listener: number): void {
    this.count('connections_accepted', 1, this.served[listener]?.name);
    // The address the proxy knows (and tells a backend in a PROXY header): the TCP peer.
    const peer = sys.getpeername(fd);
    const source = peer ? sourceOf(peer) : undefined;
    const config = this.deps.config;
    const limits = { connections: config.maxConnectionsPerSource, handshakes: config.maxHandshakesPerSource };
    const over = source === undefined ? undefined : this.sources.over(source, limits);
    if (over) return this.reject(fd, source!, over);
    const id = `c${this.identity.nextId++}`;
    this.inFlight.add(id);
    if (source !== undefined) this.sources.opened(id, source);
    this.handshakers.dispatch(fd, id, listener);
    if (this.atCapacity()) {
      this.deps.logger.warn(`at max_connections (${this.deps.config.maxConnections}); new clients wait in the backlog`);
      for (const l of this.listeners) l.pause();
    }
  }

  /** Closes a connection over a per-source limit at once, before any TLS work: with RST (no TIME_WAIT here under a flood). */
  private reject(fd: number, source: string, limit: SourceLimit): void {
    sys.setsockopt(fd, SOL_SOCKET, SO_LINGER, LINGER_ABORT);
    sys.close(fd);
    this.count(counter.rejectedPerSource(limit));
    const c = this.sources.count(source);
    const config = this.deps.config;
    const max =
      limit === 'connections'
        ? `max_connections_per_source (${config.maxConnectionsPerSource})`
        : `max_handshakes_per_source (${config.maxHandshakesPerSource})`;
    this.rejections[limit].note(`rejected a connection from ${source}: at ${max}; it has ${c.connections} open, ${c.handshakes} in handshake`);
  }

  /** Stops taking connections off the backlog; the listening sockets stay open so the kernel keeps queueing. */
  pauseAccepting(): void {
    this.accepting = false;
    for (const l of this.listeners) l.pause();
  }

  resumeAccepting(): void {
    this.accepting = true;
    this.recheckCapacity();
  }

  /** Waits up to `boundMs` for in-progress handshakes, then aborts the rest; resolves with how many were aborted. */
  async settleHandshakes(boundMs: number): Promise<number> {
    const end = Date.now() + boundMs;
    while (this.inFlight.size > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    const left = this.inFlight.size;
    if (left) this.handshakers.abortAll('upgrade in progress');
    while (this.inFlight.size > 0) await new Promise((r) => setTimeout(r, 5));
    if (left) this.count('handshakes_aborted_by_upgrade', left);
    return left;
  }

  get bridgeCanServe(): boolean {
    return servableByBridge(this.deps.config.listeners);
  }

  /** What the upgrade bridge needs to accept and handshake as this image does while it execs (keys: the caller wipes them). */
  doorOrder(): Promise<DoorOrder | undefined> {
    return doorOrderOf(this.deps.config, this.deps.handshake, this.deps.tickets);
  }

  /** New listener settings for every handshake worker; the caller wipes the keys in `served`. */
  async reloadHandshakes(served: HandshakeListener[], timeouts: ReloadTimeouts): Promise<void> {
    await this.handshakers.reload(served, timeouts);
  }

  /** A copy of the session ticket keys for the hand-off state (the upgrade zeroes it once encoded). */
  carryTickets(): CarriedTickets {
    return this.deps.tickets.carry();
  }

  /** Records connections the relay worker already took over from a previous image. */
  adoptRelayed(infos: ConnectionInfo[]): void {
    for (const info of infos) {
      this.live.set(info.id, { ...info });
      // Carried connections count against their source in this image as they did in the last.
      const source = sourceOfClient(info.client);
      if (source !== undefined) this.sources.adopted(info.id, source);
    }
  }

  /** What `ironsocket status` shows (runtime/snapshots.ts). */
  status(): Promise<StatusSnapshot & { generation: number; lastUpgrade?: UpgradeRecord }> {
    return statusSnapshot(this);
  }

  /** What /metrics shows (runtime/snapshots.ts). */
  metricsSnapshot(): Promise<MetricsSnapshot> {
    return metricsSnapshot(this);
  }

  /** Closes the listeners and stops the workers; `keepStored`: a start that failed leaves the fd store's listeners in place. */
  async close(keepStored = false): Promise<void> {
    if (!keepStored) this.unstore(LISTENER_FDNAME); // a stopped proxy's port closes
    for (const l of this.listeners) l.close();
    this.handshakers.abortAll('shutting down');
    await this.handshakers.stop();
    this.deps.tickets.stop();
    await this.deps.relay.stop();
  }
}
