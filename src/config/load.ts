// Merges defaults, the TOML config file and CLI flags into the one ProxyConfig the proxy runs with.
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createSecureContext } from 'node:tls';
import { parse as parseToml, TomlError } from 'smol-toml';
import type { ProxyConfig } from '../proxy/types.js';
import { defaultCertificatePaths, ensureDefaultCertificate } from './default-cert.js';
import type * as z from 'zod';
import { ConfigError, FileSchema, fields, validate, type FileConfig } from './schema.js';

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
  maxConnections: 10_000,
  logLevel: 'info',
} as const satisfies Partial<ProxyConfig>;

/** $XDG_RUNTIME_DIR/ironsocket/admin.sock, /run/ironsocket/admin.sock as root, else $TMPDIR/ironsocket-UID/admin.sock. */
export function defaultAdminSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'ironsocket', 'admin.sock');
  const uid = process.getuid?.() ?? 0;
  if (uid === 0) return '/run/ironsocket/admin.sock';
  return join(tmpdir(), `ironsocket-${uid}`, 'admin.sock');
}

const FLAG_NAMES: Record<keyof ConfigFlags, string> = {
  listen: '--listen',
  backend: '--backend',
  cert: '--cert',
  key: '--key',
  ktls: '--ktls',
  adminSocket: '--admin-socket',
  logLevel: '--log-level',
  workers: '--workers',
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

  const listen = flag('listen') ?? file.listen ?? { ...DEFAULTS.listen };
  const backend = flag('backend') ?? file.backend ?? { ...DEFAULTS.backend };
  const ktls = flag('ktls') ?? file.ktls ?? DEFAULTS.ktls;
  const workers = flag('workers') ?? file.workers ?? availableParallelism();
  const logLevel = flag('logLevel') ?? file.log?.level ?? DEFAULTS.logLevel;
  const certFlag = flag('cert');
  const keyFlag = flag('key');
  const adminFlag = flag('adminSocket');
  let certFile = pathFrom(certFlag, file.cert);
  let keyFile = pathFrom(keyFlag, file.key);
  const adminSocket = pathFrom(adminFlag, file.admin_socket) ?? defaultAdminSocketPath(env);

  const src = opts.file ?? '';
  if ((certFile === undefined) !== (keyFile === undefined)) {
    const [given, missing] = certFile !== undefined ? ['cert', 'key'] : ['key', 'cert'];
    problems.push(
      `${given} was given without ${missing}: pass both (--cert and --key, or cert and key in the config file), or neither to use the generated self-signed certificate`,
    );
  }
  const adminBytes = Buffer.byteLength(adminSocket);
  if (adminBytes > MAX_UNIX_PATH_BYTES) {
    const where = adminFlag !== undefined ? '--admin-socket' : file.admin_socket !== undefined ? `${src}: admin_socket` : 'admin socket (default path)';
    problems.push(`${where}: expected a Unix socket path of at most ${MAX_UNIX_PATH_BYTES} bytes, got ${JSON.stringify(adminSocket)} (${adminBytes} bytes)`);
  }
  if (problems.length > 0) throw new ConfigError(problems);

  let certSource: CertSource = 'configured';
  if (certFile === undefined || keyFile === undefined) {
    if (opts.generateDefaultCert === false) {
      ({ certFile, keyFile } = defaultCertificatePaths(env));
      certSource = 'default-not-generated';
    } else {
      const def = await ensureDefaultCertificate(env);
      ({ certFile, keyFile } = def);
      certSource = def.created ? 'default-created' : 'default-reused';
    }
  }

  const config: ProxyConfig = {
    listen,
    backend,
    certFile,
    keyFile,
    ktls,
    adminSocket,
    handshakeTimeoutMs: file.timeouts?.handshake ?? DEFAULTS.handshakeTimeoutMs,
    backendConnectTimeoutMs: file.timeouts?.backend_connect ?? DEFAULTS.backendConnectTimeoutMs,
    idleTimeoutMs: file.timeouts?.idle ?? DEFAULTS.idleTimeoutMs,
    maxConnections: file.limits?.max_connections ?? DEFAULTS.maxConnections,
    logLevel,
    workers,
  };
  return { config, certSource, file: opts.file };
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
