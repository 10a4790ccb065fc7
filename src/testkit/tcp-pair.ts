// Test support: connected TCP sockets on loopback as raw fds (the proxy's end and its peer's), and the states a peer's close leaves them in.
import assert from 'node:assert/strict';
import { AF_INET, IPPROTO_TCP, SOCK_CLOEXEC, SOCK_STREAM, SOL_SOCKET, SO_LINGER, sys } from '../kernel/libc.js';
import { decodeSockaddr, encodeSockaddr, formatEndpoint } from '../kernel/sockaddr.js';

const TCP_INFO = 11;
/** tcpi_state of a socket whose connection is over (after a reset, or a FIN answering ours), as getpeername sees it: ENOTCONN. */
export const TCP_CLOSE = 7;

/** A connected TCP pair on loopback: `near` is the proxy's socket, `far` the peer's. */
export function tcpPair(): { near: number; far: number } {
  const l = sys.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC);
  try {
    sys.bind(l, encodeSockaddr({ host: '127.0.0.1', port: 0 }));
    sys.listen(l, 4);
    const far = sys.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC);
    assert.equal(sys.connect(far, sys.getsockname(l)), 0);
    const near = sys.accept4(l, SOCK_CLOEXEC);
    assert.ok(near > 0);
    return { near, far };
  } finally {
    sys.close(l);
  }
}

/** The peer address of a connected socket, as a connection's info names it. */
export const peerName = (fd: number): string => formatEndpoint(decodeSockaddr(sys.getpeername(fd)!));

/** The socket's TCP state (tcpi_state). */
export function tcpState(fd: number): number {
  const b = Buffer.alloc(8);
  assert.ok(sys.getsockoptBuf(fd, IPPROTO_TCP, TCP_INFO, b) > 0, `TCP_INFO of fd ${fd}`);
  return b[0]!;
}

/** Waits (up to 2 s, blocking) until the socket is in `state`. */
export function awaitTcpState(fd: number, state: number): void {
  const end = Date.now() + 2000;
  while (tcpState(fd) !== state && Date.now() < end) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
  assert.equal(tcpState(fd), state, `fd ${fd} reached TCP state ${state}`);
}

/** Closes with SO_LINGER 0: the peer gets RST instead of FIN. */
export function resetClose(fd: number): void {
  const linger = Buffer.alloc(8); // struct linger { int l_onoff = 1; int l_linger = 0; }
  linger.writeInt32LE(1, 0);
  assert.equal(sys.setsockopt(fd, SOL_SOCKET, SO_LINGER, linger), 0);
  sys.close(fd);
}
