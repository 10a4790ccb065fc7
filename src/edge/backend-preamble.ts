// Sends the PROXY protocol header to a freshly connected backend, whole, before the relay moves any client byte.
import { EAGAIN, EINTR, errnoName, sys } from '../kernel/libc.js';
import { EPOLLOUT, type Poller } from '../kernel/poller.js';
import { decodeSockaddr, type Endpoint } from '../kernel/sockaddr.js';
import type { ClientCertificate } from '../handshake/client-certificate.js';
import { encodeProxyV1, encodeProxyV2, type ProxyHeaderInfo } from './proxy-protocol.js';
import type { ProxyProtocolVersion } from '../core/types.js';

export interface PreambleFacts {
  clientFd: number;
  version: string;
  cipher: string;
  sni?: string;
  alpn?: string;
  clientCert?: ClientCertificate;
  /** The connection id, sent as PP2_TYPE_UNIQUE_ID so backend logs can be matched with ours. */
  id: string;
}

/** The header for `version`, built from the client socket's own addresses and the session. */
export function buildPreamble(version: Exclude<ProxyProtocolVersion, 'off'>, f: PreambleFacts): Buffer {
  const peer = sys.getpeername(f.clientFd);
  if (!peer) throw new Error('the client disconnected before the PROXY header could be built');
  const info: ProxyHeaderInfo = {
    client: decodeSockaddr(peer) as Endpoint,
    proxy: decodeSockaddr(sys.getsockname(f.clientFd)) as Endpoint,
    tls: {
      version: f.version,
      cipher: f.cipher,
      sni: f.sni,
      alpn: f.alpn,
      clientCert: f.clientCert ? { verified: f.clientCert.verified, subjectCN: f.clientCert.subjectCN, subject: f.clientCert.subject } : undefined,
    },
    uniqueId: Buffer.from(f.id),
  };
  return version === 'v1' ? encodeProxyV1(info) : encodeProxyV2(info);
}

/** Writes all of `buf` to the non-blocking `fd`, waiting for room when needed; rejects on error or after `timeoutMs`. */
export function writeAll(poller: Poller, fd: number, buf: Buffer, timeoutMs: number): Promise<void> {
  let off = 0;
  const attempt = (): 'done' | 'wait' => {
    while (off < buf.length) {
      const r = sys.send(fd, buf.subarray(off), buf.length - off);
      if (r === -EAGAIN || r === -EINTR) return 'wait';
      if (r < 0) throw new Error(`sending the PROXY header to the backend: ${errnoName(-r)}`);
      off += r;
    }
    return 'done';
  };
  try {
    if (attempt() === 'done') return Promise.resolve();
  } catch (e) {
    return Promise.reject(e);
  }
  return new Promise((resolve, reject) => {
    const finish = (err?: Error) => {
      clearTimeout(timer);
      poller.remove(fd);
      if (err) reject(err);
      else resolve();
    };
    const timer = setTimeout(() => finish(new Error(`the backend took no PROXY header bytes for ${timeoutMs} ms`)), timeoutMs);
    poller.add(fd, EPOLLOUT, () => {
      try {
        if (attempt() === 'done') finish();
      } catch (e) {
        finish(e as Error);
      }
    });
  });
}
