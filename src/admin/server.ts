// Serves the local admin API (newline-delimited JSON over a 0600 Unix socket) that `ironsocket status` talks to.
//
// Access control: the socket is created with umask 0177 inside a directory that is 0700 when we create it
// (an existing directory must be a real directory owned by us or root, not group/world-writable, in a parent that
// is not world-writable unless sticky), then chmod'ed 0600.
// So only the same uid (and root) can connect. On top of that each connection's peer uid is read with
// SO_PEERCRED and anyone but root or our own uid is refused (a socket passed on by someone else, a mode changed by hand).
import { lstat, mkdir, stat, chmod, unlink } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import * as z from 'zod';
import type { StatusSnapshot } from '../core/types.js';
import type { Logger } from '../core/log.js';
import { peerUid } from './peer-cred.js';

export type AdminHandler = (args: Record<string, unknown>) => unknown;
export interface AdminHandlers {
  status(): StatusSnapshot | Promise<StatusSnapshot>;
  [cmd: string]: AdminHandler;
}

export interface AdminServerOptions {
  logger?: Logger;
  /** Largest accepted request line. Default 64 KiB. */
  maxRequestBytes?: number;
  /** A connection idle for this long is closed. Default 5 s. */
  timeoutMs?: number;
}

export interface AdminServer {
  readonly path: string;
  /** Stops listening, drops open admin connections and removes the socket file (if it is still ours). */
  close(): Promise<void>;
}

export type AdminResponse = { ok: true; result: unknown } | { ok: false; error: string };

export const MAX_REQUEST_BYTES = 64 * 1024;
const MAX_UNIX_PATH_BYTES = 107;
const RequestSchema = z.object({ cmd: z.string().min(1), args: z.record(z.string(), z.unknown()).optional() });

/** Starts the admin server at `path`; fails if another process is already answering there. */
export async function startAdminServer(path: string, handlers: AdminHandlers, opts: AdminServerOptions = {}): Promise<AdminServer> {
  const maxBytes = opts.maxRequestBytes ?? MAX_REQUEST_BYTES;
  const timeoutMs = opts.timeoutMs ?? 5000;
  if (Buffer.byteLength(path) > MAX_UNIX_PATH_BYTES) {
    throw new Error(`admin socket path is too long for a Unix socket (${Buffer.byteLength(path)} bytes, at most ${MAX_UNIX_PATH_BYTES}): ${path}`);
  }
  await preparePrivateDir(dirname(path));
  await removeStaleSocket(path);

  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    const uid = peerUid(socket);
    const own = process.getuid?.() ?? 0;
    if (uid !== own && uid !== 0) {
      opts.logger?.warn({ peerUid: uid }, `admin socket: refused a connection from uid ${uid ?? 'unknown'} (only uid ${own} and root may use it)`);
      socket.end(
        JSON.stringify({ ok: false, error: `permission denied: uid ${uid ?? 'unknown'} may not use this admin socket` } satisfies AdminResponse) + '\n',
      );
      return;
    }
    serveConnection(socket, handlers, maxBytes, timeoutMs, opts.logger);
  });
  await listenPrivately(server, path);
  await chmod(path, 0o600);
  const { ino, dev } = await stat(path);
  opts.logger?.debug({ adminSocket: path }, 'admin socket listening');

  let closing: Promise<void> | undefined;
  return {
    path,
    close() {
      closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const s of sockets) s.destroy();
        await closed;
        // Only unlink the file we created; a successor may already have replaced it.
        const now = await lstat(path).catch(() => undefined);
        if (now && now.ino === ino && now.dev === dev) await unlink(path).catch(() => undefined);
      })();
      return closing;
    },
  };
}

/**
 * Creates the socket's directory 0700, or checks that an existing one cannot be tampered with by others: a real
 * directory (not a symlink) owned by us or root, writable by nobody else, in a parent that others cannot rename it
 * out of (a world-writable parent needs the sticky bit). Another user who created it first is refused, not used.
 */
async function preparePrivateDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await lstat(dir);
  const uid = process.getuid?.() ?? 0;
  const mode = (m: number) => (m & 0o7777).toString(8);
  if (st.isSymbolicLink() || !st.isDirectory()) {
    throw new Error(
      `admin socket directory ${dir} is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a directory'}; refusing to use it (choose another --admin-socket)`,
    );
  }
  if (st.uid !== uid && st.uid !== 0) {
    throw new Error(
      `admin socket directory ${dir} is owned by uid ${st.uid}, not by you (uid ${uid}); another user may have created it first; remove it or choose another --admin-socket`,
    );
  }
  if ((st.mode & 0o022) !== 0) {
    throw new Error(
      `admin socket directory ${dir} is writable by other users (mode ${mode(st.mode)}, group or world write bit set); use a private (0700) directory for --admin-socket`,
    );
  }
  const parent = await stat(dirname(dir));
  if ((parent.mode & 0o002) !== 0 && (parent.mode & 0o1000) === 0) {
    throw new Error(
      `admin socket directory ${dir} is inside ${dirname(dir)}, which every user can write to without the sticky bit (mode ${mode(parent.mode)}): another user could replace the directory; choose another --admin-socket`,
    );
  }
}

/** Removes a leftover socket file, but only when nothing answers on it. */
async function removeStaleSocket(path: string): Promise<void> {
  const st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (!st) return;
  if (!st.isSocket()) throw new Error(`admin socket path ${path} exists and is not a socket; refusing to replace it`);
  const answer = await probe(path);
  if (answer === 'listening') throw new Error(`another ironsocket is running (its admin socket ${path} answers)`);
  await unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
}

function probe(path: string): Promise<'listening' | 'stale'> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    const timer = setTimeout(() => finish(() => resolve('listening')), 1000); // a full backlog still means someone owns it
    const finish = (f: () => void) => {
      clearTimeout(timer);
      s.destroy();
      f();
    };
    s.once('connect', () => finish(() => resolve('listening')));
    s.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') finish(() => resolve('stale'));
      else finish(() => reject(new Error(`cannot check admin socket ${path}: ${err.message}`)));
    });
  });
}

/** Binds with umask 0177 so the socket is never connectable by others, even before the chmod. */
function listenPrivately(server: Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(new Error(`cannot listen on admin socket ${path}: ${err.message}`));
    server.once('error', onError);
    const previous = process.umask(0o177);
    try {
      server.listen(path, () => {
        server.off('error', onError);
        resolve();
      });
    } finally {
      process.umask(previous);
    }
  });
}

function serveConnection(socket: Socket, handlers: AdminHandlers, maxBytes: number, timeoutMs: number, logger?: Logger): void {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let queue = Promise.resolve();
  socket.setTimeout(timeoutMs, () => socket.destroy());
  socket.on('error', () => socket.destroy());
  const send = (res: AdminResponse) => {
    if (!socket.destroyed && socket.writable) socket.write(JSON.stringify(res) + '\n');
  };
  const enqueue = (line: string) => {
    queue = queue.then(async () => send(await handleLine(line, handlers, logger)));
  };
  socket.on('data', (chunk: Buffer) => {
    let start = 0;
    for (let nl = chunk.indexOf(10); nl !== -1; nl = chunk.indexOf(10, start)) {
      const line = Buffer.concat([...pending, chunk.subarray(start, nl)]);
      pending = [];
      pendingBytes = 0;
      start = nl + 1;
      if (line.length > maxBytes) return reject();
      enqueue(line.toString('utf8'));
    }
    const rest = chunk.subarray(start);
    pendingBytes += rest.length;
    if (pendingBytes > maxBytes) return reject();
    if (rest.length > 0) pending.push(rest);
  });
  socket.on('end', () => {
    if (pendingBytes > 0) enqueue(Buffer.concat(pending).toString('utf8'));
    queue = queue.then(() => void socket.end());
  });
  function reject(): void {
    socket.removeAllListeners('data');
    socket.removeAllListeners('end');
    socket.resume(); // discard the rest of the oversized request
    queue = queue.then(() => {
      send({ ok: false, error: `request too large (limit ${maxBytes} bytes)` });
      socket.end(() => socket.destroy());
    });
  }
}

async function handleLine(line: string, handlers: AdminHandlers, logger?: Logger): Promise<AdminResponse> {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    return { ok: false, error: 'request is not valid JSON' };
  }
  const req = RequestSchema.safeParse(raw);
  if (!req.success) return { ok: false, error: 'expected a request like {"cmd":"status","args":{}}' };
  const { cmd, args = {} } = req.data;
  if (!Object.hasOwn(handlers, cmd) || typeof handlers[cmd] !== 'function') {
    return { ok: false, error: `unknown command ${JSON.stringify(cmd)}` };
  }
  try {
    return { ok: true, result: (await handlers[cmd](args)) ?? null };
  } catch (err) {
    logger?.warn({ err, cmd }, 'admin command failed');
    return { ok: false, error: err instanceof Error ? err.message : String(err) };
  }
}
