// Opens the backend TCP connection with raw syscalls, so its fd can go straight to the relay worker (libuv never reads it).
import net from 'node:net';
import {
  AF_INET,
  AF_INET6,
  EINPROGRESS,
  IPPROTO_TCP,
  IPV6_TRANSPARENT,
  IP_BIND_ADDRESS_NO_PORT,
  IP_TRANSPARENT,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOL_IP,
  SOL_IPV6,
  SOL_SOCKET,
  SO_ERROR,
  SysError,
  TCP_NODELAY,
  errnoName,
  sys,
} from '../kernel/libc.js';
import { EPOLLOUT, type Poller } from '../kernel/poller.js';
import { encodeSockaddr, formatEndpoint, type Endpoint } from '../kernel/sockaddr.js';
import type { BackendFailure } from '../core/counters.js';

export class BackendError extends Error {
  constructor(
    message: string,
    readonly reason: BackendFailure,
  ) {
    super(message);
  }
}

export interface ConnectOptions {
  /**
   * Transparent mode: connect from this address (the client's own) instead of one of the host's,
   * via IP_TRANSPARENT / IPV6_TRANSPARENT. Needs CAP_NET_ADMIN or CAP_NET_RAW, and policy routing
   * that delivers the backend's replies to this host (docs/transparent.md).
   *
   * Pass port 0, as Iron Socket does: the kernel then picks the port at connect() time, unique for
   * the whole 4-tuple. Reusing the client's own port looks more faithful but is fragile: the client
   * recycles its ports faster than the backend forgets them (a SYN into the backend's TIME_WAIT for
   * the previous connection on that port is dropped or reset), two listeners forwarding the same
   * client to one backend collide (EADDRINUSE), and nothing on the backend needs the client's port.
   * A non-zero port is bound as given.
   */
  source?: Endpoint;
}

const TRANSPARENT_DOC = 'see docs/transparent.md';

/** Connects to `ep` (an IP literal); resolves with a connected non-blocking fd, or rejects (fd closed). */
export function connectBackend(poller: Poller, ep: Endpoint, timeoutMs: number, signal?: AbortSignal, opts: ConnectOptions = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const family = net.isIP(ep.host) === 6 ? AF_INET6 : AF_INET;
    const where = formatEndpoint(ep);
    let source: Endpoint | undefined;
    if (opts.source) {
      source = sameFamilySource(opts.source, family);
      if (!source) return reject(familyMismatch(opts.source, family, where));
    }
    let fd: number;
    try {
      fd = sys.socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC);
    } catch (e) {
      return reject(new BackendError(`backend ${where}: ${(e as Error).message}`, 'error'));
    }
    sys.setsockoptInt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    if (source) {
      const err = bindTransparent(fd, family, source, where);
      if (err) {
        sys.close(fd);
        return reject(err);
      }
    }
    let timer: NodeJS.Timeout | undefined;
    const failWith = (errno: number) => {
      const name = errnoName(errno);
      const reason =
        name === 'ECONNREFUSED' ? 'refused' : name === 'ETIMEDOUT' ? 'timeout' : name === 'EHOSTUNREACH' || name === 'ENETUNREACH' ? 'unreachable' : 'error';
      return new BackendError(`backend ${where}: connect failed: ${name}`, reason);
    };
    const r = sys.connect(fd, encodeSockaddr(ep));
    if (r === 0) return resolve(fd);
    if (r !== -EINPROGRESS) {
      sys.close(fd);
      return reject(failWith(-r));
    }
    // A backend on this host usually completes the TCP handshake within connect() itself: no wait for readiness then.
    if (sys.getpeername(fd)) return resolve(fd);
    const onAbort = () => done(new BackendError(`backend ${where}: connect aborted`, 'error'));
    const done = (err?: BackendError) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      poller.remove(fd);
      if (err) {
        sys.close(fd);
        reject(err);
      } else resolve(fd);
    };
    try {
      poller.add(fd, EPOLLOUT, () => {
        const soErr = sys.getsockoptInt(fd, SOL_SOCKET, SO_ERROR);
        done(soErr ? failWith(soErr) : undefined);
      });
    } catch (e) {
      sys.close(fd); // the poller is closed: the thread is stopping
      return reject(new BackendError(`backend ${where}: ${(e as Error).message}`, 'error'));
    }
    timer = setTimeout(() => done(new BackendError(`backend ${where}: no connection after ${timeoutMs} ms`, 'timeout')), timeoutMs);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The source in the backend's family (an IPv4-mapped IPv6 client, from a dual-stack listener, counts as IPv4), or undefined. */
function sameFamilySource(src: Endpoint, family: number): Endpoint | undefined {
  const v = net.isIP(src.host);
  if (family === AF_INET6) return v === 6 ? src : undefined;
  if (v === 4) return src;
  const mapped = v === 6 ? /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(src.host) : null;
  return mapped ? { host: mapped[1]!, port: src.port } : undefined;
}

function familyMismatch(src: Endpoint, family: number, where: string): BackendError {
  const v = net.isIP(src.host);
  const backend = family === AF_INET6 ? 'IPv6' : 'IPv4';
  const what = v ? `is IPv${v} but the backend is ${backend}` : 'is not an IP address';
  return new BackendError(`backend ${where}: transparent source ${src.host} ${what}; a transparent connection keeps the client's address family`, 'error');
}

/** Marks fd transparent and binds it to `src` (a non-local address is allowed then); a BackendError on failure. */
function bindTransparent(fd: number, family: number, src: Endpoint, where: string): BackendError | undefined {
  const [level, opt, optName] = family === AF_INET6 ? [SOL_IPV6, IPV6_TRANSPARENT, 'IPV6_TRANSPARENT'] : [SOL_IP, IP_TRANSPARENT, 'IP_TRANSPARENT'];
  const r = sys.setsockoptInt(fd, level, opt, 1);
  if (r < 0) {
    const name = errnoName(-r);
    const why = name === 'EPERM' ? `: transparent mode needs CAP_NET_ADMIN (or CAP_NET_RAW); ${TRANSPARENT_DOC}` : '';
    return new BackendError(`backend ${where}: setsockopt(${optName}) failed: ${name}${why}`, 'error');
  }
  // Port 0: defer the port choice to connect(), where the kernel picks one unique for the 4-tuple rather than
  // reserving it for this address alone, so one busy client address does not exhaust the ephemeral range.
  // Best effort (Linux >= 4.2; it applies to IPv6 sockets too): without it, bind() picks the port.
  if (src.port === 0) sys.setsockoptInt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1);
  try {
    sys.bind(fd, encodeSockaddr(src));
  } catch (e) {
    const code = e instanceof SysError ? e.code : (e as Error).message;
    return new BackendError(`backend ${where}: bind to transparent source ${formatEndpoint(src)} failed: ${code}; ${TRANSPARENT_DOC}`, 'error');
  }
  return undefined;
}
