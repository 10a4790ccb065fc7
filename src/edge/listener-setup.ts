// Turns a configured listener into what a handshake worker needs (certificate bytes, names, CA, resolved backends), checked up front.
import crypto from 'node:crypto';
import dns from 'node:dns/promises';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import { readCrlFile } from '../config/crl.js';
import { keyPermissionWarning } from '../config/key-permissions.js';
import { CertSelector, certificateNames } from '../handshake/sni.js';
import { LibsslServer, type LibsslServerOptions } from '../handshake/libssl.js';
import type { TicketKeyring } from '../handshake/ticket-keys.js';
import type { Endpoint } from '../kernel/sockaddr.js';
import type { HostPort, ListenerConfig, ProxyProtocolVersion } from '../core/types.js';

/** One SNI entry: every pair serving the same names shares a context (e.g. an ECDSA and an RSA chain for one site). */
export interface CertGroup {
  names: string[];
  certs: Buffer[];
  keys: Buffer[];
}

/** A listener as a handshake worker runs it; structured-cloneable. Keys are wiped by whoever holds the last copy. */
export interface HandshakeListener {
  name: string;
  /** The first group is the default (served without SNI or for an unknown name). */
  groups: CertGroup[];
  ca?: Buffer;
  /** The client_auth.crl CRLs, one PEM block each (node:tls loads one CRL per buffer). */
  crl?: string[];
  clientAuth?: 'require' | 'optional';
  alpn: string[];
  backends: Endpoint[];
  routes: { alpn: string; backends: Endpoint[] }[];
  proxyProtocol: ProxyProtocolVersion;
  transparent: boolean;
}

/** TLS settings every server shares (versions, ciphers, options). */
export type TlsBase = Pick<LibsslServerOptions, 'minVersion' | 'ciphers' | 'noRenegotiation'>;

export class ListenerSetupError extends Error {}

export async function resolveEndpoint(ep: HostPort): Promise<Endpoint> {
  if (net.isIP(ep.host)) return { host: ep.host, port: ep.port };
  const r = await dns.lookup(ep.host);
  return { host: r.address, port: ep.port };
}

async function readPem(what: string, path: string, listener: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === 'ENOENT' ? 'no such file' : err.code === 'EACCES' ? 'permission denied' : err.message;
    throw new ListenerSetupError(`listener "${listener}": ${what} ${path}: ${why}`);
  }
}

/** Receives a warning about a configured file that does not stop it being served (e.g. a key others can read). */
export type SetupWarn = (message: string, file: string) => void;

/**
 * The CRLs of client_auth.crl as PEM blocks. A file that is not a CRL, or whose CRLs do not match the CA bundle
 * (OpenSSL would refuse clients of a CA without one), is refused; an expired CRL is only a warning: refusing
 * it would keep serving an older one (on reload) or nothing (at start), and OpenSSL fails closed on it anyway.
 */
async function readCrl(file: string, ca: Buffer, listener: string, warn?: SetupWarn): Promise<string[]> {
  const r = await readCrlFile(file, ca);
  if (r.problems.length > 0) throw new ListenerSetupError(`listener "${listener}": ${r.problems.join('; ')}`);
  if (r.warnings.length > 0) warn?.(`listener "${listener}": ${r.warnings.join('; ')}`, file);
  return r.crls.map((c) => c.pem);
}

/** Reads and checks every file of `l`; throws ListenerSetupError naming the listener and file on any problem. */
export async function prepareListener(l: ListenerConfig, base: TlsBase, warn?: SetupWarn): Promise<HandshakeListener> {
  const groups: CertGroup[] = [];
  const byNames = new Map<string, CertGroup>();
  const ordered = [...l.certs].sort((a, b) => Number(b.default) - Number(a.default)); // the default first, others in order
  const ca = l.clientAuth ? await readPem('client CA bundle', l.clientAuth.caFile, l.name) : undefined;
  const crl = l.clientAuth?.crlFile ? await readCrl(l.clientAuth.crlFile, ca!, l.name, warn) : undefined;
  try {
    for (const c of ordered) {
      const cert = await readPem('certificate', c.certFile, l.name);
      const key = await readPem('key', c.keyFile, l.name);
      const loose = warn ? await keyPermissionWarning(c.keyFile) : undefined;
      if (loose) warn!(loose, c.keyFile);
      let names: string[];
      try {
        names = c.names.length > 0 ? c.names.map((n) => n.toLowerCase()) : certificateNames(cert);
        tls.createSecureContext({ minVersion: base.minVersion, ciphers: base.ciphers, cert, key, ca });
      } catch (e) {
        key.fill(0);
        const msg = (e as Error).message;
        const why = /key values mismatch/i.test(msg) ? 'the certificate and key do not match' : msg;
        throw new ListenerSetupError(`listener "${l.name}": certificate ${c.certFile} / key ${c.keyFile}: ${why}`);
      }
      if (names.length === 0 && !c.default) {
        key.fill(0);
        throw new ListenerSetupError(`listener "${l.name}": certificate ${c.certFile} has no DNS name (no subjectAltName, no CN); give names = [...]`);
      }
      const id = [...names].sort().join(' ');
      const same = byNames.get(id);
      if (same) {
        same.certs.push(cert);
        same.keys.push(key);
      } else {
        const g = { names, certs: [cert], keys: [key] };
        byNames.set(id, g);
        groups.push(g);
      }
    }
    if (ca) {
      try {
        tls.createSecureContext({ ca });
      } catch (e) {
        throw new ListenerSetupError(`listener "${l.name}": client CA bundle ${l.clientAuth!.caFile}: ${(e as Error).message}`);
      }
      try {
        if (crl) tls.createSecureContext({ ca, crl });
      } catch (e) {
        throw new ListenerSetupError(`listener "${l.name}": client_auth.crl ${l.clientAuth!.crlFile}: ${(e as Error).message}`);
      }
    }
    // Each server the handshake workers will build, built once here: anything OpenSSL refuses is refused before serving.
    const served = { name: l.name, ca, crl, clientAuth: l.clientAuth ? ('optional' as const) : undefined, alpn: l.alpn };
    for (const g of groups) {
      try {
        new LibsslServer(serverOptions(served, g, base)).free();
      } catch (e) {
        throw new ListenerSetupError(`listener "${l.name}": certificates for ${g.names.join(', ')} cannot be served together: ${(e as Error).message}`);
      }
    }
    const backends = await Promise.all(l.backends.map(resolveEndpoint));
    const routes = await Promise.all(l.routes.map(async (r) => ({ alpn: r.alpn, backends: await Promise.all(r.backends.map(resolveEndpoint)) })));
    return {
      name: l.name,
      groups,
      ca,
      ...(crl ? { crl } : {}),
      clientAuth: l.clientAuth ? (l.clientAuth.required ? 'require' : 'optional') : undefined,
      alpn: l.alpn,
      backends,
      routes,
      proxyProtocol: l.proxyProtocol,
      transparent: l.transparent,
    };
  } catch (e) {
    for (const g of groups) for (const k of g.keys) k.fill(0);
    if (e instanceof ListenerSetupError) throw e;
    throw new ListenerSetupError(`listener "${l.name}": ${(e as Error).message}`);
  }
}

/**
 * Prepares every listener of `config` (all or nothing); throws with the first problem. `warn` hears each
 * warning once per file, however many listeners use that file.
 */
export async function prepareAll(config: { listeners: ListenerConfig[] }, base: TlsBase, warn?: SetupWarn): Promise<HandshakeListener[]> {
  const out: HandshakeListener[] = [];
  const warned = new Set<string>();
  const once: SetupWarn | undefined = warn
    ? (message, file) => {
        if (warned.has(file)) return;
        warned.add(file);
        warn(message, file);
      }
    : undefined;
  try {
    for (const l of config.listeners) out.push(await prepareListener(l, base, once));
    return out;
  } catch (e) {
    wipeListeners(out);
    throw e;
  }
}

/** Zeroes the private keys held in `ls`. */
export function wipeListeners(ls: HandshakeListener[]): void {
  for (const l of ls) for (const g of l.groups) for (const k of g.keys) k.fill(0);
}

/**
 * The session ID context of a listener's sessions: a ticket resumes only where it matches (OpenSSL treats another as
 * unknown). Without client certificates it is HAProxy's ("haproxy"), so that with a shared key file clients resume
 * on either. With client certificates it is the listener's own and changes with its CA bundle, CRLs and policy: a
 * session whose certificate another listener (or an older CA bundle or CRL) verified never resumes here.
 */
export function sessionIdContext(l: Pick<HandshakeListener, 'name' | 'clientAuth' | 'ca' | 'crl'>): string {
  if (!l.clientAuth) return 'haproxy';
  const h = crypto.createHash('sha256').update(`ironsocket mTLS\0${l.name}\0${l.clientAuth}\0`);
  h.update(l.ca ?? Buffer.alloc(0));
  for (const c of l.crl ?? []) h.update(c);
  // OpenSSL keeps at most 32 bytes (SSL_MAX_SID_CTX_LENGTH).
  return h.digest('hex').slice(0, 32);
}

/** The parts of a listener its servers are made from. */
type ServedParts = Pick<HandshakeListener, 'name' | 'ca' | 'crl' | 'clientAuth' | 'alpn'>;

/** The options of the server for group `g` of listener `l`; tickets under `tickets`, else under keys OpenSSL makes. */
function serverOptions(l: ServedParts, g: CertGroup, base: TlsBase, tickets?: TicketKeyring): LibsslServerOptions {
  return {
    ...base,
    pairs: g.certs.map((c, i) => ({ certificateChain: c, key: g.keys[i]! })),
    alpn: l.alpn,
    clientAuth: l.ca ? { ca: l.ca, crl: l.crl } : undefined,
    tickets,
    sessionIdContext: sessionIdContext(l),
  };
}

/** Builds the SNI table of one listener (in the handshake worker): every server issues and accepts tickets under `tickets`. */
export function certSelector(l: HandshakeListener, base: TlsBase, tickets: TicketKeyring): CertSelector<LibsslServer> {
  const servers: { names: string[]; context: LibsslServer }[] = [];
  try {
    for (const g of l.groups) servers.push({ names: g.names, context: new LibsslServer(serverOptions(l, g, base, tickets)) });
  } catch (e) {
    for (const s of servers) s.context.free();
    throw e;
  }
  return new CertSelector(servers, servers[0]!.context);
}
