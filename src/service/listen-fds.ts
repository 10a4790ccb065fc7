// Takes the descriptors systemd passes (sd_listen_fds: LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES; sockets, and the fd store's anything) and says what a socket is.
import { AF_INET, AF_INET6, AF_UNIX, SOL_SOCKET, SO_ACCEPTCONN, SO_DOMAIN, SO_TYPE, sys } from '../kernel/libc.js';
import { decodeSockaddr, decodeUnixSockaddr, formatEndpoint } from '../kernel/sockaddr.js';

/** The first passed descriptor; the others follow it without gaps. */
export const LISTEN_FDS_START = 3;

export interface ListenFd {
  fd: number;
  /** Its name from LISTEN_FDNAMES (a socket unit's FileDescriptorName=), when the variable is set. */
  name?: string;
}

export interface SocketDescription {
  type: 'stream' | 'dgram' | 'seqpacket' | 'raw' | `type ${number}`;
  family: 'inet' | 'inet6' | 'unix' | `family ${number}`;
  listening: boolean;
  /** "host:port" ("[v6]:port") for inet sockets; a path, "@name" or "" (unbound) for Unix ones. */
  address: string;
}

const TYPES: Record<number, SocketDescription['type']> = { 1: 'stream', 2: 'dgram', 3: 'raw', 5: 'seqpacket' };
const FAMILIES: Record<number, SocketDescription['family']> = { [AF_INET]: 'inet', [AF_INET6]: 'inet6', [AF_UNIX]: 'unix' };

function parseCount(name: string, value: string): number {
  const n = /^[0-9]{1,9}$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n))
    throw new Error(`socket activation: ${name}=${JSON.stringify(value)} is not a non-negative decimal integer (of at most 9 digits)`);
  return n;
}

/**
 * The descriptors systemd passed us, as sd_listen_fds_with_names(3) finds them: none unless
 * LISTEN_PID names this process (the variables may have been inherited from a parent that was the
 * target); else LISTEN_FDS of them from fd 3 on, named by the colon-separated LISTEN_FDNAMES.
 * Each must be open (sockets from socket activation; anything from the fd store: memfds, pipes);
 * each is made close-on-exec. Throws an Error naming the variable or descriptor at fault when the
 * variables are malformed or a descriptor is missing.
 *
 * The variables are left in `env`: call unsetListenEnv once the sockets are taken, before
 * starting children or exec'ing (an upgrade carries its listeners its own way; a new image that
 * still saw LISTEN_PID = its own, unchanged PID would take whatever then sits at fds 3, 4, ...).
 */
export function listenFds(env: NodeJS.ProcessEnv = process.env, pid: number = process.pid): ListenFd[] {
  const pidVar = env.LISTEN_PID;
  const countVar = env.LISTEN_FDS;
  if (pidVar === undefined || countVar === undefined) return [];
  const target = parseCount('LISTEN_PID', pidVar);
  if (target === 0) throw new Error('socket activation: LISTEN_PID=0 names no process');
  if (target !== pid) return [];
  const count = parseCount('LISTEN_FDS', countVar);
  const namesVar = env.LISTEN_FDNAMES;
  const names = namesVar === undefined ? undefined : count === 0 && namesVar === '' ? [] : namesVar.split(':');
  if (names && names.length !== count) {
    throw new Error(`socket activation: LISTEN_FDNAMES has ${names.length} name(s) (${JSON.stringify(namesVar)}) for LISTEN_FDS=${count}`);
  }
  const out: ListenFd[] = [];
  for (let i = 0; i < count; i++) {
    const fd = LISTEN_FDS_START + i;
    try {
      sys.isCloexec(fd); // EBADF: not open
    } catch {
      throw new Error(`socket activation: LISTEN_FDS=${count} but fd ${fd} is not open`);
    }
    out.push(names ? { fd, name: names[i] } : { fd });
  }
  for (const { fd } of out) sys.setCloexec(fd, true);
  return out;
}

/** Removes LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES from `env`, so no child or exec'd image takes them as its own. */
export function unsetListenEnv(env: NodeJS.ProcessEnv = process.env): void {
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
}

/** What a socket is (type, family, whether it listens, local address), to match a passed socket to a configured listen address. */
export function describeSocket(fd: number): SocketDescription {
  const type = sys.getsockoptInt(fd, SOL_SOCKET, SO_TYPE);
  const family = sys.getsockoptInt(fd, SOL_SOCKET, SO_DOMAIN);
  const listening = sys.getsockoptInt(fd, SOL_SOCKET, SO_ACCEPTCONN) !== 0;
  const name = sys.getsockname(fd);
  let address: string;
  if (family === AF_UNIX) address = decodeUnixSockaddr(name) ?? '';
  else {
    const ep = decodeSockaddr(name);
    address = ep ? formatEndpoint(ep) : '';
  }
  return { type: TYPES[type] ?? `type ${type}`, family: FAMILIES[family] ?? `family ${family}`, listening, address };
}
