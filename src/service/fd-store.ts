// Deposits descriptors in systemd's file descriptor store (FDSTORE=1, FDNAME=) and takes them out again (FDSTOREREMOVE=1).
import { SystemdNotifier } from './notify.js';

/** The name every listening socket the proxy deposits goes under (one entry, replaced whenever the listeners change). */
export const LISTENER_FDNAME = 'ironsocket-listener';

const CONNECTION_PREFIX = 'conn-';

/** The store name of a relayed connection: "conn-" and its id ("conn-c42"). */
export function connectionFdName(id: string): string {
  return CONNECTION_PREFIX + id;
}

/** The connection id in a store name, or undefined when the name is not a connection's. */
export function connectionIdOf(name: string): string | undefined {
  return /^conn-(c[1-9][0-9]{0,15})$/.exec(name)?.[1];
}

/** The number in a connection id ("c42" → 42), for continuing the numbering after a restart. */
export function connectionNumber(id: string): number {
  const n = Number(id.slice(1));
  return Number.isSafeInteger(n) ? n : 0;
}

/** systemd's rule for FDNAME= (fdname_is_valid): 1 to 255 printable ASCII characters, no colon (LISTEN_FDNAMES separates with it). */
export function checkFdName(name: string): void {
  if (!/^[\x20-\x7e]{1,255}$/.test(name) || name.includes(':')) {
    throw new Error(`fd store: invalid name ${JSON.stringify(name)} (want 1 to 255 printable ASCII characters, no ":")`);
  }
}

/**
 * One service's file descriptor store, reached through NOTIFY_SOCKET. The store keeps its own
 * duplicates: a connection whose descriptors sit there stays open however the proxy ends, so every
 * close must take the entry out first (remove), or the peer never sees it.
 */
export class FdStore {
  constructor(private readonly notifier: SystemdNotifier) {}

  /** The notify socket's address (for relay workers, which open their own FdStore). */
  get socket(): string {
    return this.notifier.socket;
  }

  /** The store at $NOTIFY_SOCKET, or undefined without one. Throws on a NOTIFY_SOCKET that cannot be used. */
  static fromEnv(env: NodeJS.ProcessEnv = process.env): FdStore | undefined {
    const n = SystemdNotifier.fromEnv(env);
    return n && new FdStore(n);
  }

  static at(socket: string): FdStore {
    return new FdStore(new SystemdNotifier(socket));
  }

  /**
   * Adds `fds` under `name` (they stay open here; the store keeps duplicates). Throws NotifyError.
   * `poll: false` (FDPOLL=0): systemd keeps them even after a hangup or error on one, until removed.
   * `wait: false`: fail with EAGAIN rather than block on a manager whose queue is full.
   */
  deposit(name: string, fds: number[], opts: { poll?: boolean; wait?: boolean } = {}): void {
    checkFdName(name);
    if (fds.length === 0) throw new Error(`fd store: nothing to deposit under ${name}`);
    this.notifier.notify(opts.poll === false ? { FDSTORE: 1, FDNAME: name, FDPOLL: 0 } : { FDSTORE: 1, FDNAME: name }, fds, opts);
  }

  /** Takes every descriptor stored under `name` out of the store (it closes its copies). Throws NotifyError (`wait` as for deposit). */
  remove(name: string, opts: { wait?: boolean } = {}): void {
    checkFdName(name);
    this.notifier.notify({ FDSTOREREMOVE: 1, FDNAME: name }, [], opts);
  }
}
