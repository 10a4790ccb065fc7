// Checks every fd the previous image handed over before adopting it: fd numbers can be reused, so trust nothing unchecked.
import { IPPROTO_TCP, SOCK_STREAM, SOL_SOCKET, SO_TYPE, sys } from '../kernel/libc.js';
import { TCP_ULP, TlsRecordIo, RECORD_ALERT } from '../kernel/ktls.js';
import { decodeSockaddr, formatEndpoint } from '../kernel/sockaddr.js';
import { RecordProtection } from '../record/aead.js';
import { suiteByName } from '../record/suites.js';
import type { CarriedConnection } from '../relay/protocol.js';
import type { CarriedListener } from './state.js';

const SO_ACCEPTCONN = 30;
const ALERT_INTERNAL_ERROR = 80;

function socketType(fd: number): number | undefined {
  try {
    return sys.getsockoptInt(fd, SOL_SOCKET, SO_TYPE);
  } catch {
    return undefined;
  }
}

/** Returns why the fd is not the listener described, or undefined when it is. */
export function checkListener(l: CarriedListener): string | undefined {
  if (socketType(l.fd) !== SOCK_STREAM) return `fd ${l.fd} is not a stream socket`;
  if (sys.getsockoptInt(l.fd, SOL_SOCKET, SO_ACCEPTCONN) !== 1) return `fd ${l.fd} is not listening`;
  const local = formatEndpoint(decodeSockaddr(sys.getsockname(l.fd)));
  if (local !== l.address) return `fd ${l.fd} is bound to ${local}, expected ${l.address}`;
  return undefined;
}

/**
 * Whether `fd` is a stream socket connected to `expectPeer`, or was: a connection that ends while it is carried is
 * still ours (its peer's reset, or its FIN after ours, leaves the socket in TCP_CLOSE with its last bytes to read,
 * and the relay ends it as it would have). A socket that never connected, or is connected elsewhere, is not.
 */
function checkConnected(fd: number, expectPeer: string, what: string): string | undefined {
  if (socketType(fd) !== SOCK_STREAM) return `${what} fd ${fd} is not a stream socket`;
  const peer = sys.peerOf(fd);
  if (!peer) return `${what} fd ${fd} is not connected`;
  const got = formatEndpoint(decodeSockaddr(peer));
  if (got !== expectPeer) return `${what} fd ${fd} is connected to ${got}, expected ${expectPeer}`;
  return undefined;
}

/** The upper-layer protocol of a TCP socket ("tls" once kTLS is installed), or "" for none. */
function ulpOf(fd: number): string {
  const b = Buffer.alloc(16);
  const r = sys.getsockoptBuf(fd, IPPROTO_TCP, TCP_ULP, b);
  return r < 0 ? '' : b.subarray(0, r).toString('latin1').replace(/\0.*$/s, '');
}

/** Returns why this carried connection cannot be adopted, or undefined when every fd checks out. */
export function checkPair(p: CarriedConnection): string | undefined {
  const info = p.pair.info;
  const bad = checkConnected(p.clientFd, info.client, 'client') ?? checkConnected(p.backendFd, info.backend, 'backend');
  if (bad) return bad;
  const ulp = ulpOf(p.clientFd);
  if (info.mode === 'kernel' && ulp !== 'tls') return `client fd ${p.clientFd} has no kernel TLS state (ULP "${ulp}")`;
  if (info.mode === 'user' && ulp === 'tls') return `client fd ${p.clientFd} unexpectedly carries kernel TLS`;
  if (info.mode === 'user' && (!p.user || !suiteByName(p.user.suite, p.user.version))) return 'userspace record state missing';
  return undefined;
}

/** Closes a connection that could not be restored: a fatal alert where the state allows, then both fds. */
export function rejectPair(p: CarriedConnection, io: TlsRecordIo): void {
  try {
    if (p.pair.info.mode === 'kernel' && ulpOf(p.clientFd) === 'tls') {
      io.sendRecord(p.clientFd, RECORD_ALERT, Buffer.from([2, ALERT_INTERNAL_ERROR]));
    } else if (p.user) {
      const suite = suiteByName(p.user.suite, p.user.version);
      if (suite && !p.user.out?.length) {
        // Views, not copies: the constructor copies, and wipeCarried zeroes the carried originals.
        const view = (a: Uint8Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
        const tx = new RecordProtection(suite, view(p.user.tx.key), view(p.user.tx.iv), p.user.tx.seq);
        let rec: Buffer;
        try {
          rec = tx.seal(21, Buffer.from([2, ALERT_INTERNAL_ERROR]));
        } finally {
          tx.wipe();
        }
        sys.send(p.clientFd, rec, rec.length);
      }
    }
  } catch {
    // best effort: the fd may not even be ours
  }
  // Close only sockets beyond stdio: anything else under that number is not ours to close.
  for (const fd of [p.clientFd, p.backendFd]) if (fd > 2 && socketType(fd) !== undefined) sys.close(fd);
}

/** Zeroes every key and secret carried for user-mode connections. */
export function wipeCarried(pairs: CarriedConnection[]): void {
  for (const p of pairs) {
    const u = p.user;
    if (!u) continue;
    for (const b of [u.tx.key, u.tx.iv, u.rx.key, u.rx.iv, u.secrets?.client, u.secrets?.server, u.inbox, u.plain, u.out, u.handshake]) b?.fill(0);
  }
}
