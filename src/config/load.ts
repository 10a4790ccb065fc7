// Merges defaults, the TOML config file and CLI flags into the one ProxyConfig the proxy runs with.
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createSecureContext } from 'node:tls';
import { parse as parseToml, TomlError } from 'smol-toml';
import type { ListenerConfig, ProxyConfig, SessionTicketConfig } from '../core/types.js';
import { defaultAdminSocketPath } from './admin-socket-path.js';
import { defaultCertificatePaths, ensureDefaultCertificate } from './default-cert.js';
import type * as z from 'zod';
import { ConfigError, FileSchema, LISTENER_KEYS, fields, formatHostPort, validate, type FileConfig, type FileListener } from './schema.js';

/** CLI flag values, still raw strings; validated with the same rules as the file. */
export interface ConfigFlags {
  listen?: string;
  backend?: string;
  cert?: string;
  key?: string;
  ktls?: string;
  adminSocket?: string;
  logLevel?: string;
  workers?: string;
  /** --fd-store (a switch: it can turn the store on over the file, not off). */
  fdStore?: boolean;
}

export interface LoadOptions {
  /** Path of the TOML config file; relative paths inside it resolve against its directory. */
  file?: string;
  flags: ConfigFlags;
  env?: NodeJS.ProcessEnv;
  /** When false, the default certificate is not generated (paths are still filled in). Default true. */
  generateDefaultCert?: boolean;
}

/** Where the certificate came from: configured by the user, or the generated self-signed one. */
export type CertSource = 'configured' | 'default-created' | 'default-reused' | 'default-not-generated';

export interface ResolvedConfig {
  config: ProxyConfig;
  certSource: CertSource;
  /** The config file, as given, when one was used. */
  file?: string;
}

/** Unix socket paths are limited by sockaddr_un.sun_path (108 bytes including the NUL). */
export const MAX_UNIX_PATH_BYTES = 107;

export const DEFAULTS = {
  listen: { host: '127.0.0.1', port: 8443 },
  backend: { host: '127.0.0.1', port: 8080 },
  ktls: 'auto',
  handshakeTimeoutMs: 10_000,
  backendConnectTimeoutMs: 5_000,
  idleTimeoutMs: 0,
  backendRetryMs: 10_000,
  maxConnections: 10_000,
  /** Handshakes in progress per source: far above what a NAT'ed crowd (or a test opening 200 at once) has in handshake at once, a small part of max_connections. */
  maxHandshakesPerSource: 256,
  logLevel: 'info',
  /** A fresh ticket key every 2 hours; a ticket lives as long (OpenSSL's default session timeout, too). */
  ticketRotateEveryMs: 2 * 3_600_000,
} as const satisfies Partial<ProxyConfig> & { listen: object; backend: object; ticketRotateEveryMs: number };

/**
 * Unset max_connections_per_source: a tenth of max_connections, but at least 64 (a browser opens 6 per
 * host, a NAT'ed office a few dozen), and never more than half of max_connections, so that no one source
 * (IPv4 address, IPv6 /64) can fill the proxy.
 */
export function perSourceDefault(maxConnections: number): number {
  return Math.min(Math.max(Math.ceil(maxConnections / 10), 64), Math.ceil(maxConnections / 2));
}

/** $XDG_RUNTIME_DIR/ironsocket/admin.sock, /run/ironsocket/admin.sock as root, else ~/.local/state/ironsocket/admin.sock. */
export { defaultAdminSocketPath };

const FLAG_NAMES: Record<keyof ConfigFlags, string> = {
  listen: '--listen',
  backend: '--backend',
  cert: '--cert',
  key: '--key',
  ktls: '--ktls',
  adminSocket: '--admin-socket',
  logLevel: '--log-level',
  workers: '--workers',
  fdStore: '--fd-store',
};

/** Reads and validates the config file; throws ConfigError with `FILE: key: ...` messages. */
export async function readConfigFile(file: string): Promise<FileConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.message;
    throw new ConfigError([`${file}: cannot read config file: ${why}`]);
  }
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (err) {
    if (!(err instanceof TomlError)) throw err;
    const what = err.message.split('\n')[0].replace(/^Invalid TOML document: /, '');
    const excerpt = err.codeblock ? '\n' + err.codeblock.replace(/\n$/, '') : '';
    throw new ConfigError([`${file}:${err.line}:${err.column}: invalid TOML: ${what}${excerpt}`]);
  }
  return validate(FileSchema, raw, file);
}

/** Like loadConfig, but also says where the certificate came from (for the banner and `check`). */
export async function resolveConfig(opts: LoadOptions): Promise<ResolvedConfig> {
  const env = opts.env ?? process.env;
  const problems: string[] = [];
  let file: FileConfig = {};
  if (opts.file !== undefined) {
    try {
      file = await readConfigFile(opts.file);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems.push(...err.problems);
    }
  }
  const fileDir = opts.file !== undefined ? dirname(resolve(opts.file)) : process.cwd();
  const flag = <K extends keyof ConfigFlags & keyof typeof fields>(name: K) => {
    const value = opts.flags[name];
    if (value === undefined) return undefined;
    try {
      return validate(fields[name], value, '', () => FLAG_NAMES[name]) as z.output<(typeof fields)[K]>;
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems.push(...err.problems);
      return undefined;
    }
  };
  // Flag paths are relative to the working directory, file paths to the config file's directory.
  const pathFrom = (flagValue: string | undefined, fileValue: string | undefined) =>
    flagValue !== undefined ? resolve(flagValue) : fileValue !== undefined ? resolve(fileDir, fileValue) : undefined;

  const given = { listen: flag('listen'), backend: flag('backend'), cert: flag('cert'), key: flag('key') };
  const ktls = flag('ktls') ?? file.ktls ?? DEFAULTS.ktls;
  const workers = flag('workers') ?? file.workers ?? availableParallelism();
  const logLevel = flag('logLevel') ?? file.log?.level ?? DEFAULTS.logLevel;
  const adminFlag = flag('adminSocket');
  const adminSocket = pathFrom(adminFlag, file.admin_socket) ?? defaultAdminSocketPath(env);

  const src = opts.file ?? '';
  // Listener settings live in [[listener]] tables, or at the top level for a file with a single listener.
  const topLevel = LISTENER_KEYS.filter((k) => file[k] !== undefined);
  if (file.listener && topLevel.length > 0) {
    problems.push(`${src}: ${topLevel.join(', ')}: with [[listener]] tables, listener settings go inside them, not at the top level`);
  }
  const fileListeners: FileListener[] = file.listener ?? [Object.fromEntries(topLevel.map((k) => [k, file[k]])) as FileListener];
  const overriding = (Object.keys(given) as (keyof typeof given)[]).filter((k) => given[k] !== undefined);
  if (fileListeners.length > 1 && overriding.length > 0) {
    problems.push(
      `${overriding.map((k) => FLAG_NAMES[k]).join(', ')}: the config file has ${fileListeners.length} listeners; these flags can only override a file with one`,
    );
  }
  const explicit = file.listener !== undefined;
  const listeners: ListenerConfig[] = [];
  let needsDefaultCert = false;
  fileListeners.forEach((l, i) => {
    const at = explicit ? `${src}: listener[${i + 1}]` : src;
    const where = (key: string) => [at, key].filter((x) => x !== '').join(explicit ? '.' : ': ');
    const listen = given.listen ?? l.listen ?? (explicit ? undefined : { ...DEFAULTS.listen });
    if (!listen) problems.push(`${where('listen')}: required in every [[listener]] table, e.g. listen = "0.0.0.0:443"`);
    if (l.backend && l.backends) problems.push(`${where('backends')}: give backend or backends, not both`);
    const backends = given.backend ? [given.backend] : (l.backends ?? (l.backend ? [l.backend] : explicit ? [] : [{ ...DEFAULTS.backend }]));
    if (backends.length === 0) problems.push(`${where('backend')}: required in every [[listener]] table, e.g. backend = "127.0.0.1:8080"`);
    const certs: ListenerConfig['certs'] = [];
    if (given.cert !== undefined || given.key !== undefined) {
      if (given.cert === undefined || given.key === undefined) {
        const [has, missing] = given.cert !== undefined ? ['cert', 'key'] : ['key', 'cert'];
        problems.push(`--${has} was given without --${missing}: pass both, or neither to use the configured or the generated self-signed certificate`);
      } else certs.push({ certFile: resolve(given.cert), keyFile: resolve(given.key), names: [], default: false });
    } else {
      if ((l.cert === undefined) !== (l.key === undefined)) {
        const [has, missing] = l.cert !== undefined ? ['cert', 'key'] : ['key', 'cert'];
        problems.push(
          `${where(has)}: ${has} was given without ${missing}: pass both (--cert and --key, or cert and key in the config file), or neither to use the generated self-signed certificate`,
        );
      } else if (l.cert !== undefined && l.key !== undefined)
        certs.push({ certFile: resolve(fileDir, l.cert), keyFile: resolve(fileDir, l.key), names: [], default: false });
      for (const c of l.certs ?? [])
        certs.push({ certFile: resolve(fileDir, c.cert), keyFile: resolve(fileDir, c.key), names: c.names ?? [], default: c.default ?? false });
    }
    const defaults = certs.filter((c) => c.default).length;
    if (defaults > 1) problems.push(`${where('certs')}: ${defaults} certificates say default = true; at most one can be the default`);
    if (defaults === 0 && certs[0]) certs[0].default = true;
    if (certs.length === 0) needsDefaultCert = true;
    const alpn = l.alpn ?? [];
    const routes = (l.route ?? []).map((r, j) => {
      if (r.backend && r.backends) problems.push(`${where(`route[${j + 1}].backends`)}: give backend or backends, not both`);
      if (!alpn.includes(r.alpn))
        problems.push(`${where(`route[${j + 1}].alpn`)}: "${r.alpn}" is not offered by this listener (alpn = ${JSON.stringify(alpn)})`);
      const to = r.backends ?? (r.backend ? [r.backend] : []);
      if (to.length === 0) problems.push(`${where(`route[${j + 1}]`)}: expected backend or backends`);
      return { alpn: r.alpn, backends: to };
    });
    const clientAuth = l.client_auth
      ? {
          caFile: resolve(fileDir, l.client_auth.ca),
          required: (l.client_auth.verify ?? 'require') === 'require',
          ...(l.client_auth.crl !== undefined ? { crlFile: resolve(fileDir, l.client_auth.crl) } : {}),
        }
      : undefined;
    if (!listen) return;
    listeners.push({
      name: l.name ?? formatHostPort(listen),
      listen,
      backends,
      certs,
      alpn,
      routes,
      clientAuth,
      proxyProtocol: l.proxy_protocol ?? 'off',
      transparent: l.transparent ?? false,
    });
  });
  const seen = new Map<string, string>();
  for (const l of listeners) {
    const key = formatHostPort(l.listen);
    if (l.listen.port === 0) continue; // each gets a port of its own
    if (seen.has(key)) problems.push(`${src ? `${src}: ` : ''}listeners "${seen.get(key)}" and "${l.name}" both listen on ${key}`);
    seen.set(key, l.name);
  }
  const adminBytes = Buffer.byteLength(adminSocket);
  if (adminBytes > MAX_UNIX_PATH_BYTES) {
    const where = adminFlag !== undefined ? '--admin-socket' : file.admin_socket !== undefined ? `${src}: admin_socket` : 'admin socket (default path)';
    problems.push(`${where}: expected a Unix socket path of at most ${MAX_UNIX_PATH_BYTES} bytes, got ${JSON.stringify(adminSocket)} (${adminBytes} bytes)`);
  }
  const sessionTickets = ticketSettings(file, src, fileDir, problems);
  if (problems.length > 0) throw new ConfigError(problems);

  let certSource: CertSource = 'configured';
  if (needsDefaultCert) {
    let pair: { certFile: string; keyFile: string };
    if (opts.generateDefaultCert === false) {
      pair = defaultCertificatePaths(env);
      certSource = 'default-not-generated';
    } else {
      const def = await ensureDefaultCertificate(env);
      pair = { certFile: def.certFile, keyFile: def.keyFile };
      certSource = def.created ? 'default-created' : 'default-reused';
    }
    for (const l of listeners) if (l.certs.length === 0) l.certs.push({ ...pair, names: ['localhost'], default: true });
  }

  const config: ProxyConfig = {
    listeners,
    ktls,
    adminSocket,
    handshakeTimeoutMs: file.timeouts?.handshake ?? DEFAULTS.handshakeTimeoutMs,
    backendConnectTimeoutMs: file.timeouts?.backend_connect ?? DEFAULTS.backendConnectTimeoutMs,
    backendRetryMs: file.timeouts?.backend_retry ?? DEFAULTS.backendRetryMs,
    idleTimeoutMs: file.timeouts?.idle ?? DEFAULTS.idleTimeoutMs,
    maxConnections: file.limits?.max_connections ?? DEFAULTS.maxConnections,
    maxConnectionsPerSource: file.limits?.max_connections_per_source ?? perSourceDefault(file.limits?.max_connections ?? DEFAULTS.maxConnections),
    maxHandshakesPerSource: file.limits?.max_handshakes_per_source ?? DEFAULTS.maxHandshakesPerSource,
    logLevel,
    workers,
    fdStore: opts.flags.fdStore === true || file.fd_store === true,
    sessionTickets,
    ...(file.metrics ? { metrics: file.metrics.listen } : {}),
    ...(file.user ? { user: file.user } : {}),
    ...(file.group ? { group: file.group } : {}),
  };
  return { config, certSource, file: opts.file };
}

/** TLS 1.3 caps a ticket's lifetime at 7 days (RFC 8446 §4.6.1). */
const MAX_TICKET_LIFETIME_MS = 7 * 86_400_000;

/** [session_tickets] with its defaults; pushes a problem for settings that cannot work together. */
function ticketSettings(file: FileConfig, src: string, fileDir: string, problems: string[]): SessionTicketConfig {
  const t = file.session_tickets ?? {};
  const at = (key: string) => `${src ? `${src}: ` : ''}session_tickets.${key}`;
  const keyFile = t.key_file !== undefined ? resolve(fileDir, t.key_file) : undefined;
  const rotateEveryMs = t.rotate_every ?? DEFAULTS.ticketRotateEveryMs;
  const lifetimeMs = t.lifetime ?? (keyFile ? DEFAULTS.ticketRotateEveryMs : rotateEveryMs);
  if (keyFile !== undefined && t.rotate_every !== undefined)
    problems.push(`${at('rotate_every')}: not with key_file: the keys of a key file are rotated by editing it and reloading (ironsocket reload)`);
  if (keyFile === undefined && lifetimeMs > rotateEveryMs)
    problems.push(
      `${at('lifetime')}: expected at most rotate_every (${rotateEveryMs / 1000}s): a ticket is accepted under the current and the previous key only, so one that lived longer would not resume`,
    );
  if (lifetimeMs > MAX_TICKET_LIFETIME_MS) problems.push(`${at('lifetime')}: expected at most 7d (TLS 1.3 caps a ticket's lifetime at 7 days)`);
  return { rotateEveryMs, lifetimeMs, ...(keyFile !== undefined ? { keyFile } : {}) };
}

/** Resolves the proxy configuration: flags override the config file, which overrides the defaults. */
export async function loadConfig(opts: { file?: string; flags: ConfigFlags; env?: NodeJS.ProcessEnv }): Promise<ProxyConfig> {
  return (await resolveConfig(opts)).config;
}

/** Checks that cert and key files load in a TLS context and match; returns problems (empty when fine). */
export async function checkCertificateFiles(certFile: string, keyFile: string, now: number = Date.now()): Promise<string[]> {
  const problems: string[] = [];
  const read = async (what: string, path: string) => {
    try {
      return await readFile(path);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.message;
      problems.push(`${what}: cannot read ${JSON.stringify(path)}: ${why}`);
      return undefined;
    }
  };
  // Both are read, so that both problems are reported, in this order, whichever fails first.
  const [cert, key] = await Promise.all([read('cert', certFile), read('key', keyFile)]);
  if (!cert || !key) return problems.sort((a, b) => (a.startsWith('cert') ? -1 : b.startsWith('cert') ? 1 : 0));
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    const msg = (err as Error).message;
    if (/key values mismatch/i.test(msg)) return [`cert ${JSON.stringify(certFile)} and key ${JSON.stringify(keyFile)} do not match`];
    return [`cert ${JSON.stringify(certFile)} / key ${JSON.stringify(keyFile)}: cannot be loaded: ${msg}`];
  }
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(cert);
  } catch (err) {
    return [`cert ${JSON.stringify(certFile)}: not a PEM certificate: ${(err as Error).message}`];
  }
  if (Date.parse(leaf.validTo) < now) return [`cert ${JSON.stringify(certFile)}: expired on ${leaf.validTo}`];
  if (Date.parse(leaf.validFrom) > now) return [`cert ${JSON.stringify(certFile)}: not valid before ${leaf.validFrom}`];
  return [];
}

/** Checks that a client CA bundle reads and holds at least one PEM certificate; returns problems (empty when fine). */
export async function checkCaFile(caFile: string): Promise<string[]> {
  let pem: string;
  try {
    pem = await readFile(caFile, 'latin1');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return [
      `client_auth.ca: cannot read ${JSON.stringify(caFile)}: ${e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.message}`,
    ];
  }
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) return [`client_auth.ca: ${JSON.stringify(caFile)} holds no PEM certificate`];
  for (const b of blocks) {
    try {
      new X509Certificate(b);
    } catch (err) {
      return [`client_auth.ca: ${JSON.stringify(caFile)}: not a valid certificate: ${(err as Error).message}`];
    }
  }
  return [];
}
