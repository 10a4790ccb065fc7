// Defines what a valid config value is (TOML file and CLI flags alike) and turns zod issues into precise messages.
import { isIPv4, isIPv6 } from 'node:net';
import * as z from 'zod';
import type { KtlsPolicy, ProxyConfig } from '../core/types.js';

export type LogLevel = ProxyConfig['logLevel'];
export interface HostPort {
  host: string;
  port: number;
}

export const KTLS_POLICIES = ['auto', 'require', 'off'] as const satisfies readonly KtlsPolicy[];
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const satisfies readonly LogLevel[];

/** Timers in Node overflow above 2^31-1 ms; 24 days keeps every duration safely below that. */
export const MAX_DURATION_MS = 24 * 24 * 3600 * 1000;

const HOSTNAME = /^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;
const EXPECT_HOST_PORT = 'expected "HOST:PORT"';

/** Parses "host:port", "1.2.3.4:port" or "[v6]:port"; returns an "expected ..." message on failure. */
export function parseHostPort(text: string, allowPortZero = false): HostPort | { error: string } {
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const m = /^\[([^\]]+)\]:([^:]*)$/.exec(text);
    if (!m || !isIPv6(m[1])) return { error: `${EXPECT_HOST_PORT} with a valid IPv6 address in brackets, e.g. "[::1]:8443"` };
    host = m[1];
    portText = m[2];
  } else {
    const i = text.lastIndexOf(':');
    if (i <= 0) return { error: EXPECT_HOST_PORT };
    host = text.slice(0, i);
    portText = text.slice(i + 1);
    if (host.includes(':')) return { error: `${EXPECT_HOST_PORT} (IPv6 addresses need brackets, e.g. "[::1]:8443")` };
    const numeric = /^[\d.]+$/.test(host);
    if (numeric ? !isIPv4(host) : !HOSTNAME.test(host)) return { error: `${EXPECT_HOST_PORT} with a valid IPv4 address or host name` };
  }
  const min = allowPortZero ? 0 : 1;
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!(port >= min && port <= 65535)) return { error: `${EXPECT_HOST_PORT} with a port between ${min} and 65535` };
  return { host, port };
}

/** Renders a HostPort back into the form parseHostPort accepts. */
export function formatHostPort(hp: HostPort): string {
  return hp.host.includes(':') ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses "500ms", "10s", "5m", "1h30m", "0"; returns milliseconds or null. */
export function parseDuration(text: string): number | null {
  if (text === '0') return 0;
  const part = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/y;
  let total = 0;
  let pos = 0;
  while (pos < text.length) {
    part.lastIndex = pos;
    const m = part.exec(text);
    if (!m) return null;
    total += Number(m[1]) * UNIT_MS[m[2]];
    pos = part.lastIndex;
  }
  return text.length > 0 ? Math.round(total) : null;
}

const EXPECT_DURATION = 'expected a duration like "500ms", "10s", "5m" or "1h30m"';

function durationSchema(allowZero: boolean) {
  const expected = allowZero ? `${EXPECT_DURATION}, or "0" to disable` : EXPECT_DURATION;
  return z.union([z.string(), z.number()], { error: expected }).transform((value, ctx): number => {
    const ms = value === 0 ? 0 : typeof value === 'string' ? parseDuration(value) : null;
    const fail = (message: string) => {
      ctx.addIssue({ code: 'custom', message, input: value });
      return z.NEVER;
    };
    if (ms === null) return fail(expected);
    if (ms === 0 && !allowZero) return fail(`expected a duration greater than 0, e.g. "10s"`);
    if (ms > MAX_DURATION_MS) return fail('expected a duration of at most 24d');
    return ms;
  });
}

function hostPortSchema(allowPortZero: boolean) {
  return z.string({ error: EXPECT_HOST_PORT }).transform((value, ctx): HostPort => {
    const r = parseHostPort(value, allowPortZero);
    if ('error' in r) {
      ctx.addIssue({ code: 'custom', message: r.error, input: value });
      return z.NEVER;
    }
    return r;
  });
}

const pathSchema = z.string({ error: 'expected a file path' }).min(1, { error: 'expected a non-empty file path' });

/** One schema per setting, shared by the TOML file and the CLI flags. */
export const fields = {
  listen: hostPortSchema(true),
  backend: hostPortSchema(false),
  cert: pathSchema,
  key: pathSchema,
  ktls: z.enum(KTLS_POLICIES),
  adminSocket: pathSchema,
  handshake: durationSchema(false),
  backendConnect: durationSchema(false),
  idle: durationSchema(true),
  backendRetry: durationSchema(false),
  maxConnections: z.int({ error: 'expected a whole number' }).min(1, { error: 'expected a number of at least 1' }),
  maxPerSource: z.int({ error: 'expected a whole number' }).min(0, { error: 'expected a number of at least 0 (0: no limit)' }),
  logLevel: z.enum(LOG_LEVELS),
  /** session_tickets.rotate_every and .lifetime: whole seconds (OpenSSL's session timeout), never 0. */
  ticketDuration: durationSchema(false).refine((ms) => ms >= 1000, { error: 'expected a duration of at least 1s' }),
  // Flags arrive as strings; the file gives numbers.
  workers: z.preprocess(
    (v) => (typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v),
    z.int({ error: 'expected a whole number' }).min(1, { error: 'expected a number of at least 1' }).max(256, { error: 'expected at most 256' }),
  ),
};

const PROXY_PROTOCOLS = ['off', 'v1', 'v2'] as const;
/** ALPN protocol ids are 1–255 bytes (RFC 7301); printable ASCII keeps them loggable. */
const alpnId = z
  .string({ error: 'expected an ALPN protocol id such as "h2" or "http/1.1"' })
  .regex(/^[\x21-\x7e]{1,255}$/, { error: 'expected an ALPN protocol id of 1 to 255 printable ASCII characters, such as "h2"' });
const nameList = z.array(
  z.string().regex(/^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/, {
    error: 'expected a DNS name such as "example.com" or "*.example.com"',
  }),
);

/** Every setting a listener can have: in a [[listener]] table, or at the top level for a file with one listener. */
const listenerFields = {
  listen: fields.listen.optional(),
  backend: fields.backend.optional(),
  backends: z.array(fields.backend).min(1, { error: 'expected at least one backend' }).optional(),
  cert: fields.cert.optional(),
  key: fields.key.optional(),
  certs: z
    .array(
      z.strictObject({
        cert: fields.cert,
        key: fields.key,
        names: nameList.min(1, { error: 'expected at least one name' }).optional(),
        default: z.boolean().optional(),
      }),
    )
    .optional(),
  alpn: z.array(alpnId).optional(),
  route: z
    .array(
      z.strictObject({
        alpn: alpnId,
        backend: fields.backend.optional(),
        backends: z.array(fields.backend).min(1, { error: 'expected at least one backend' }).optional(),
      }),
    )
    .optional(),
  client_auth: z.strictObject({ ca: pathSchema, verify: z.enum(['require', 'optional']).optional(), crl: pathSchema.optional() }).optional(),
  proxy_protocol: z.enum(PROXY_PROTOCOLS).optional(),
  transparent: z.boolean().optional(),
};
export const LISTENER_KEYS = Object.keys(listenerFields) as (keyof typeof listenerFields)[];

/** The config file: global keys, [timeouts], [limits], [log], [metrics], and one or more listeners; unknown keys are errors. */
export const FileSchema = z.strictObject({
  ...listenerFields,
  listener: z.array(z.strictObject({ name: z.string().min(1, { error: 'expected a non-empty name' }).optional(), ...listenerFields })).optional(),
  ktls: fields.ktls.optional(),
  admin_socket: fields.adminSocket.optional(),
  workers: fields.workers.optional(),
  user: z.string().min(1).optional(),
  group: z.string().min(1).optional(),
  fd_store: z.boolean().optional(),
  timeouts: z
    .strictObject({
      handshake: fields.handshake.optional(),
      backend_connect: fields.backendConnect.optional(),
      idle: fields.idle.optional(),
      backend_retry: fields.backendRetry.optional(),
    })
    .optional(),
  limits: z
    .strictObject({
      max_connections: fields.maxConnections.optional(),
      max_connections_per_source: fields.maxPerSource.optional(),
      max_handshakes_per_source: fields.maxPerSource.optional(),
    })
    .optional(),
  log: z.strictObject({ level: fields.logLevel.optional() }).optional(),
  metrics: z.strictObject({ listen: fields.listen }).optional(),
  session_tickets: z
    .strictObject({
      rotate_every: fields.ticketDuration.optional(),
      lifetime: fields.ticketDuration.optional(),
      key_file: pathSchema.optional(),
    })
    .optional(),
});
export type FileListener = z.output<z.ZodObject<typeof listenerFields>> & { name?: string };
export type FileConfig = z.output<typeof FileSchema>;

/** Thrown for anything wrong in the config file or flags; one line per problem. */
export class ConfigError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(problems.join('\n'));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

function typeName(expected: string): string {
  const names: Record<string, string> = {
    object: 'a table',
    string: 'a string',
    number: 'a number',
    int: 'a whole number',
    boolean: 'true or false',
    array: 'an array',
  };
  return names[expected] ?? expected;
}

/** Per-parse error map: default "expected ..." wording for issues the schemas do not word themselves. */
const expectMap: z.core.$ZodErrorMap = (iss) => {
  if (iss.code === 'invalid_type') return `expected ${typeName(iss.expected)}`;
  if (iss.code === 'invalid_value') return `expected one of ${iss.values.map((v) => JSON.stringify(v)).join(', ')}`;
  return undefined;
};

/** Describes a raw (TOML or flag) value for the ", got ..." part of a message. */
export function describeValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Date) return `a date (${String(v)})`;
  return 'a table';
}

function allowedKeys(schema: z.ZodType, path: PropertyKey[]): string[] {
  let s: unknown = schema;
  for (const p of path) {
    const inner = s instanceof z.ZodOptional ? s.unwrap() : s;
    if (inner instanceof z.ZodArray && typeof p === 'number') s = inner.element;
    else s = inner instanceof z.ZodObject ? (inner.shape as Record<string, unknown>)[String(p)] : undefined;
  }
  const obj = s instanceof z.ZodOptional ? s.unwrap() : s;
  return obj instanceof z.ZodObject ? Object.keys(obj.shape) : [];
}

/** Renders a key path as written in TOML terms: `listener[2].certs[1].key` (array positions count from 1). */
export function keyPath(path: PropertyKey[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p + 1}]` : i > 0 ? `.${String(p)}` : String(p))).join('');
}

/** Formats issues as `PREFIX: key.path: expected ..., got ...`; label renders the key path (e.g. "--listen"). */
export function formatIssues(issues: z.core.$ZodIssue[], prefix: string, schema?: z.ZodType, label = keyPath): string[] {
  const out: string[] = [];
  const at = (path: PropertyKey[]) => [prefix, label(path)].filter((s) => s !== '').join(': ');
  for (const iss of issues) {
    if (iss.code === 'unrecognized_keys') {
      const allowed = schema ? allowedKeys(schema, iss.path) : [];
      const hint = allowed.length > 0 ? ` (allowed here: ${allowed.join(', ')})` : '';
      for (const k of iss.keys) out.push(`${at([...iss.path, k])}: unknown key${hint}`);
      continue;
    }
    out.push(`${at(iss.path)}: ${iss.message}, got ${describeValue(iss.input)}`);
  }
  return out;
}

/** Validates `value` against `schema`, throwing a ConfigError with formatted messages. */
export function validate<S extends z.ZodType>(schema: S, value: unknown, prefix: string, label?: (path: PropertyKey[]) => string): z.output<S> {
  const r = schema.safeParse(value, { reportInput: true, error: expectMap });
  if (r.success) return r.data;
  throw new ConfigError(formatIssues(r.error.issues, prefix, schema, label));
}
