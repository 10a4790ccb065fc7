// Opens the backend TCP connection with raw syscalls, so its fd can go straight to the relay worker (libuv never reads it).
import net from 'node:net';
import {
  AF_INET,
  AF_INET6,
  EINPROGRESS,
  IPPROTO_TCP,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOL_SOCKET,
  SO_ERROR,
  TCP_NODELAY,
  errnoName,
  sys,
} from '../kernel/libc.js';
import { EPOLLOUT, type Poller } from '../kernel/poller.js';
import { encodeSockaddr, formatEndpoint, type Endpoint } from '../kernel/sockaddr.js';

export class BackendError extends Error {
  constructor(
    message: string,
    readonly reason: 'refused' | 'timeout' | 'unreachable' | 'error',
  ) {
    super(message);
  }
}

/** Connects to `ep` (an IP literal); resolves with a connected non-blocking fd, or rejects (fd closed). */
export function connectBackend(poller: Poller, ep: Endpoint, timeoutMs: number, signal?: AbortSignal): Promise<number> {
  return new Promise((resolve, reject) => {
    const family = net.isIP(ep.host) === 6 ? AF_INET6 : AF_INET;
    let fd: number;
    try {
      fd = sys.socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC);
    } catch (e) {
      return reject(new BackendError(`backend ${formatEndpoint(ep)}: ${(e as Error).message}`, 'error'));
    }
    sys.setsockoptInt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    const where = formatEndpoint(ep);
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
    poller.add(fd, EPOLLOUT, () => {
      const soErr = sys.getsockoptInt(fd, SOL_SOCKET, SO_ERROR);
      done(soErr ? failWith(soErr) : undefined);
    });
    timer = setTimeout(() => done(new BackendError(`backend ${where}: no connection after ${timeoutMs} ms`, 'timeout')), timeoutMs);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
