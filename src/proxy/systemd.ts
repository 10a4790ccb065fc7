// Ties the running proxy to systemd: readiness, reload and stop notifications, and socket-activated listeners.
import type { Logger } from '../admin/log.js';
import { sys } from '../kernel/libc.js';
import { describeSocket, listenFds, unsetListenEnv } from '../systemd/listen-fds.js';
import { SystemdNotifier } from '../systemd/notify.js';

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

/**
 * Listening sockets systemd passed us (LISTEN_FDS), by local address ("0.0.0.0:443", "[::]:443").
 * Clears the variables at once: after an upgrade's exec the same PID must not take fds 3, 4, ... again.
 */
export function activatedListeners(log: Logger, env: NodeJS.ProcessEnv = process.env): Map<string, number> {
  const byAddress = new Map<string, number>();
  let fds: { fd: number; name?: string }[];
  try {
    fds = listenFds(env);
  } catch (e) {
    log.error({ err: (e as Error).message }, `socket activation ignored: ${(e as Error).message}`);
    return byAddress;
  } finally {
    unsetListenEnv(env);
  }
  for (const { fd, name } of fds) {
    const d = describeSocket(fd);
    if (d.type !== 'stream' || !d.listening || (d.family !== 'inet' && d.family !== 'inet6') || byAddress.has(d.address)) {
      log.warn({ fd, name, socket: d }, `socket activation: fd ${fd}${name ? ` (${name})` : ''} is not a TCP listening socket we can use; closed it`);
      sys.close(fd);
      continue;
    }
    byAddress.set(d.address, fd);
  }
  return byAddress;
}
