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

/**
 * Opens `file` for appending. A missing file is created 0600 (O_EXCL: never through a symlink). An existing one is
 * opened with O_NOFOLLOW and must be, by fstat of the opened descriptor (not the path, which could change meanwhile),
 * a regular file owned by our effective uid that neither its group nor others can read or write. Throws the reason
 * otherwise: a key log appended to a file someone else owns or reads would hand them every session.
 */
export function openKeylogFile(file: string): KeylogFile {
  const { O_WRONLY, O_APPEND, O_CREAT, O_EXCL } = fs.constants;
  let fd: number;
  try {
    fd = fs.openSync(file, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    fd = openExisting(file, O_WRONLY | O_APPEND);
  }
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

/** What `ironsocket check` says: undefined when the proxy may use `file` (a missing file will be created 0600), else why not. */
export function keylogFileProblem(file: string): string | undefined {
  try {
    fs.closeSync(openExisting(file, fs.constants.O_WRONLY | fs.constants.O_APPEND));
    return undefined;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    return (e as Error).message;
  }
}

const O_NOFOLLOW = fs.constants.O_NOFOLLOW;
const O_CLOEXEC = 0o2000000;
const O_NONBLOCK = fs.constants.O_NONBLOCK; // a FIFO put there must not block the open; fstat then refuses it

/** Opens an existing `file` without following a symlink and checks the descriptor; closes it and throws when refused. */
function openExisting(file: string, flags: number): number {
  let fd: number;
  try {
    fd = fs.openSync(file, flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw new Error(`${file} is a symbolic link; refusing to follow it (name the real file, owned by you, mode 0600)`);
    if (code === 'ENXIO') throw new Error(`${file} is not a regular file (a FIFO or socket); refusing to write TLS secrets to it`);
    throw e;
  }
  const st = fs.fstatSync(fd);
  const euid = process.geteuid?.() ?? 0;
  const refusal = !st.isFile()
    ? 'is not a regular file'
    : st.uid !== euid
      ? `is owned by uid ${st.uid}, not by this process (uid ${euid})`
      : (st.mode & 0o077) !== 0
        ? `can be read or written by its group or other users (mode ${(st.mode & 0o777).toString(8).padStart(3, '0')}; chmod 600 it)`
        : undefined;
  if (refusal !== undefined) {
    fs.closeSync(fd);
    throw new Error(`${file} ${refusal}; refusing to write TLS secrets to it`);
  }
  return fd;
}
