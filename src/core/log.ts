// One place that builds the process logger: JSON lines on stdout, secrets redacted.
import { pino } from 'pino';
import type { ProxyConfig } from './types.js';

export type Logger = pino.Logger;
export type LogLevel = ProxyConfig['logLevel'];

/** Field names whose values never reach the log, at any of the first three nesting levels. */
const SECRET_FIELDS = ['key', 'privateKey', 'secret', 'secrets', 'password', 'passphrase', 'token', 'authorization', 'cookie', 'psk'];
export const REDACT_PATHS = SECRET_FIELDS.flatMap((name) => [name, `*.${name}`, `*.*.${name}`]);

/** Creates the pino logger; writes synchronously to stdout unless a destination is given (tests). */
export function createLogger(level: LogLevel, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    },
    destination ?? pino.destination({ dest: 1, sync: true }),
  );
}
