// Ties the running proxy to systemd: readiness, reload and stop notifications, socket-activated listeners and what the fd store hands back.
import type { Logger } from '../core/log.js';
import { sys } from '../kernel/libc.js';
import { FdStore, LISTENER_FDNAME, connectionIdOf } from './fd-store.js';
import { describeSocket, listenFds, unsetListenEnv, type SocketDescription } from './listen-fds.js';
import { SystemdNotifier } from './notify.js';

/** What the proxy tells its service manager; every call is a no-op without NOTIFY_SOCKET and never throws. */
export interface ServiceNotes {
  ready(status: string): void;
  reloading(status: string): void;
  stopping(status: string): void;
}

/** From NOTIFY_SOCKET (kept in the environment: after an upgrade's exec, the same PID notifies again). */
export function serviceNotes(log: Logger, env: NodeJS.ProcessEnv = process.env): ServiceNotes {
  let notifier: SystemdNotifier | undefined;
  try {
    notifier = SystemdNotifier.fromEnv(env);
  } catch (e) {
    log.warn({ err: (e as Error).message }, `NOTIFY_SOCKET ignored: ${(e as Error).message}`);
  }
  const safely = (what: string, f: (n: SystemdNotifier) => void) => {
    if (!notifier) return;
    try {
      f(notifier);
      log.debug({ notify: what }, 'told systemd');
    } catch (e) {
      log.warn({ err: (e as Error).message }, `could not tell systemd ${what}: ${(e as Error).message}`);
    }
  };
  return {
    ready: (status) => safely('READY=1', (n) => n.ready(status)),
    reloading: (status) => safely('RELOADING=1', (n) => n.reloading(status)),
    stopping: (status) => safely('STOPPING=1', (n) => n.stopping(status)),
  };
}

/** Descriptors one kernel-mode connection keeps in the store: record, client, backend, two pipes' ends. */
export const STORED_PER_CONNECTION = 7;

/**
 * The fd store to deposit connections and listeners in, when fd_store is on: a warning and none
 * without NOTIFY_SOCKET (not started by systemd), so the same config runs anywhere. systemd (254 and
 * later) says how many descriptors it will keep in $FDSTORE: too few for `maxConnections` is warned about.
 */
export function fdStoreFor(enabled: boolean, log: Logger, maxConnections: number, env: NodeJS.ProcessEnv = process.env): FdStore | undefined {
  if (!enabled) return undefined;
  try {
    const store = FdStore.fromEnv(env);
    if (!store) log.warn('fd_store is on but NOTIFY_SOCKET is not set (not started by systemd): running without the fd store');
    const room = env.FDSTORE === undefined ? NaN : Number(env.FDSTORE);
    const need = STORED_PER_CONNECTION * maxConnections;
    if (store && room < need) {
      log.warn(
        { fileDescriptorStoreMax: room, need },
        `FileDescriptorStoreMax=${room} keeps about ${Math.floor(room / STORED_PER_CONNECTION)} kernel-mode connections; max_connections is ${maxConnections} (set it to ${need} or more): connections beyond it will not survive a crash`,
      );
    }
    return store;
  } catch (e) {
    log.warn({ err: (e as Error).message }, `fd_store is on but NOTIFY_SOCKET cannot be used: ${(e as Error).message}; running without the fd store`);
    return undefined;
  }
}

/** What systemd passed at start: listening sockets (socket activation, or our own from the fd store), and stored connections. */
export interface PassedDescriptors {
  /** Listening sockets by local address ("0.0.0.0:443", "[::]:443"). */
  listeners: Map<string, number>;
  /** Descriptors the fd store kept for each connection, by store name ("conn-c42"). */
  connections: Map<string, number[]>;
  /** Whether listening sockets came from our own fd store entry (LISTENER_FDNAME). */
  storedListeners: boolean;
}

/**
 * Takes the descriptors systemd passed us (LISTEN_FDS) and sorts them: connections by their fd
 * store name, listening TCP sockets by address; anything else is closed with a warning.
 * Clears the variables at once: after an upgrade's exec the same PID must not take fds 3, 4, ... again.
 */
export function passedDescriptors(log: Logger, env: NodeJS.ProcessEnv = process.env): PassedDescriptors {
  const out: PassedDescriptors = { listeners: new Map(), connections: new Map(), storedListeners: false };
  let fds: { fd: number; name?: string }[];
  try {
    fds = listenFds(env);
  } catch (e) {
    log.error({ err: (e as Error).message }, `socket activation ignored: ${(e as Error).message}`);
    return out;
  } finally {
    unsetListenEnv(env);
  }
  for (const { fd, name } of fds) {
    if (name !== undefined && connectionIdOf(name) !== undefined) {
      out.connections.set(name, [...(out.connections.get(name) ?? []), fd]);
      continue;
    }
    if (name === LISTENER_FDNAME) out.storedListeners = true;
    const d = describeOrUndefined(fd);
    if (!d || d.type !== 'stream' || !d.listening || (d.family !== 'inet' && d.family !== 'inet6') || out.listeners.has(d.address)) {
      log.warn({ fd, name, socket: d }, `socket activation: fd ${fd}${name ? ` (${name})` : ''} is not a TCP listening socket we can use; closed it`);
      sys.close(fd);
      continue;
    }
    out.listeners.set(d.address, fd);
  }
  return out;
}

function describeOrUndefined(fd: number): SocketDescription | undefined {
  try {
    return describeSocket(fd);
  } catch {
    return undefined; // not a socket
  }
}
