// Sends one request to a running ironsocket's admin socket and returns its result (used by `ironsocket status`).
import { connect } from 'node:net';
import * as z from 'zod';
import { peerUid, untrustedServer } from './peer-cred.js';

/** ADMIN_UNTRUSTED: the socket is served by another user (not root, not us); nothing was sent to it. */
export type AdminErrorCode = 'ADMIN_UNREACHABLE' | 'ADMIN_TIMEOUT' | 'ADMIN_PROTOCOL' | 'ADMIN_FAILED' | 'ADMIN_UNTRUSTED';

/** Failure talking to the admin socket; `code` says whether the proxy was unreachable, untrusted or answered with an error. */
export class AdminError extends Error {
  readonly code: AdminErrorCode;
  constructor(code: AdminErrorCode, message: string) {
    super(message);
    this.name = 'AdminError';
    this.code = code;
  }
}

/** Status replies list every connection, so they may be large; still bound them. */
const MAX_RESPONSE_BYTES = 64 * 1024 * 1024;
const ResponseSchema = z.union([z.object({ ok: z.literal(true), result: z.unknown() }), z.object({ ok: z.literal(false), error: z.string() })]);

/**
 * Sends `{"cmd":cmd,"args":args}` to the admin socket at `path` and resolves with the `result` field. The server's
 * uid (SO_PEERCRED) is checked first: only root's or our own uid's answers are read, and only they get the request.
 */
export function adminRequest<T = unknown>(path: string, cmd: string, args?: Record<string, unknown>, timeoutMs = 5000): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const socket = connect(path);
    const chunks: Buffer[] = [];
    let bytes = 0;
    let settled = false;
    const done = (err: AdminError | null, value?: unknown) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(value as T);
    };
    const timer = setTimeout(() => done(new AdminError('ADMIN_TIMEOUT', `no answer from admin socket ${path} within ${timeoutMs} ms`)), timeoutMs);

    socket.once('connect', () => {
      const refusal = untrustedServer(path, peerUid(socket));
      if (refusal !== undefined) return done(new AdminError('ADMIN_UNTRUSTED', refusal));
      // The answer is read only now: until a 'data' listener is added, nothing the server sent is looked at.
      socket.on('data', onData);
      socket.on('end', onEnd);
      socket.write(JSON.stringify(args === undefined ? { cmd } : { cmd, args }) + '\n');
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        done(new AdminError('ADMIN_UNREACHABLE', `cannot reach the admin socket: is ironsocket running? admin socket: ${path}`));
      } else if (err.code === 'EACCES') {
        done(new AdminError('ADMIN_UNREACHABLE', `permission denied on admin socket ${path} (run as the same user as the proxy)`));
      } else {
        done(new AdminError('ADMIN_UNREACHABLE', `admin socket ${path}: ${err.message}`));
      }
    });
    function onData(chunk: Buffer): void {
      const nl = chunk.indexOf(10);
      chunks.push(nl === -1 ? chunk : chunk.subarray(0, nl));
      bytes += chunk.length;
      if (nl !== -1) return finish();
      if (bytes > MAX_RESPONSE_BYTES) done(new AdminError('ADMIN_PROTOCOL', `admin response from ${path} is larger than ${MAX_RESPONSE_BYTES} bytes`));
    }
    function onEnd(): void {
      if (bytes > 0) finish();
      else done(new AdminError('ADMIN_PROTOCOL', `admin socket ${path} closed without answering`));
    }

    function finish(): void {
      let parsed: z.infer<typeof ResponseSchema>;
      try {
        parsed = ResponseSchema.parse(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch {
        return done(new AdminError('ADMIN_PROTOCOL', `unexpected answer from admin socket ${path}`));
      }
      if (parsed.ok) done(null, parsed.result);
      else done(new AdminError('ADMIN_FAILED', parsed.error));
    }
  });
}
