// The one explicit debug switch for key logging: IRONSOCKET_KEYLOG_FILE names a file that receives every session's NSS key log lines.
import fs from 'node:fs';

/** The environment variable that turns key logging on (as SSLKEYLOGFILE does for browsers and curl). */
export const KEYLOG_ENV = 'IRONSOCKET_KEYLOG_FILE';

/** The key log file the environment names, or undefined: the default, under which no key is ever logged. */
export function keylogFileFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const file = env[KEYLOG_ENV];
  return file ? file : undefined;
}

/** What the proxy says, loudly, whenever it starts with key logging on. */
export function keylogWarning(file: string): string {
  return (
    `${KEYLOG_ENV} is set: the TLS secrets of every session are appended to ${file}; ` +
    'whoever reads that file can decrypt every connection. For debugging only: unset it and upgrade or restart'
  );
}

/** An open key log file: appends whole lines, one write each (O_APPEND), so threads sharing it never interleave. */
export interface KeylogFile {
  /** Appends `line` exactly as node:tls gave it (`LABEL <client_random> <secret>\n`). Call before anything zeroes it. */
  write(line: Buffer): void;
  close(): void;
}

/** Opens `file` for appending, created with mode 0600 when missing; throws when it cannot be opened. */
export function openKeylogFile(file: string): KeylogFile {
  const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT, 0o600);
  let open = true;
  return {
    write(line) {
      if (open) fs.writeSync(fd, line);
    },
    close() {
      if (!open) return;
      open = false;
      fs.closeSync(fd);
    },
  };
}
