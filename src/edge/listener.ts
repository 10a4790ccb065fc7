// A listening socket we own (not libuv's), so accepting can pause while the kernel keeps queueing in the backlog.
import { E, EAGAIN, EINTR, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM, SOL_SOCKET, SO_REUSEADDR, AF_INET, AF_INET6, errnoName, sys } from '../kernel/libc.js';
import { EPOLLIN, type Poller } from '../kernel/poller.js';
import { decodeSockaddr, encodeSockaddr, formatEndpoint, type Endpoint } from '../kernel/sockaddr.js';
import net from 'node:net';

export interface ListenerOptions {
  endpoint: Endpoint;
  backlog?: number;
  /** An fd already bound and listening (carried across exec) to use instead of binding. */
  adoptFd?: number;
  /** Called with each accepted non-blocking, close-on-exec fd. */
  onConnection(fd: number): void;
  onError(message: string): void;
}

export class Listener {
  readonly fd: number;
  readonly address: string;
  private paused = false;
  private backoff: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly poller: Poller,
    private readonly opts: ListenerOptions,
  ) {
    if (opts.adoptFd !== undefined) {
      this.fd = opts.adoptFd;
      sys.setNonBlocking(this.fd);
      sys.setCloexec(this.fd, true);
    } else {
      const family = net.isIP(opts.endpoint.host) === 6 ? AF_INET6 : AF_INET;
      this.fd = sys.socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC);
      try {
        sys.setsockoptInt(this.fd, SOL_SOCKET, SO_REUSEADDR, 1);
        sys.bind(this.fd, encodeSockaddr(opts.endpoint));
        sys.listen(this.fd, opts.backlog ?? 1024);
      } catch (e) {
        sys.close(this.fd);
        throw new Error(`cannot listen on ${formatEndpoint(opts.endpoint)}: ${(e as Error).message}`);
      }
    }
    this.address = formatEndpoint(decodeSockaddr(sys.getsockname(this.fd)));
    poller.add(this.fd, EPOLLIN, () => this.accept());
  }

  /** Stops taking connections off the backlog (the socket stays open; clients queue). */
  pause(): void {
    if (this.paused || this.closed) return;
    this.paused = true;
    this.poller.modify(this.fd, 0);
  }

  resume(): void {
    if (!this.paused || this.closed || this.backoff) return;
    this.paused = false;
    this.poller.modify(this.fd, EPOLLIN);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.backoff);
    this.poller.remove(this.fd);
    sys.close(this.fd);
  }

  private accept(): void {
    for (let i = 0; i < 64 && !this.paused && !this.closed; i++) {
      const fd = sys.accept4(this.fd, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) {
        this.opts.onConnection(fd);
        continue;
      }
      const e = -fd;
      if (e === EAGAIN || e === EINTR || e === E.ECONNABORTED) return;
      if (e === E.EMFILE || e === E.ENFILE || e === E.ENOBUFS || e === E.ENOMEM) {
        // Out of descriptors or memory: leave clients in the backlog and retry shortly instead of spinning.
        this.opts.onError(`accept: ${errnoName(e)}; pausing accepts for 100 ms`);
        this.pause();
        this.backoff = setTimeout(() => {
          this.backoff = undefined;
          this.resume();
        }, 100);
        return;
      }
      this.opts.onError(`accept: ${errnoName(e)}`);
      return;
    }
  }
}
