// Who is at the other end of the admin socket (SO_PEERCRED), for both ends: the server checks its clients, the CLI its server.
import { lstatSync } from 'node:fs';
import type { Socket } from 'node:net';
import { dirname } from 'node:path';
import { SOL_SOCKET, sys } from '../kernel/libc.js';

const SO_PEERCRED = 17;

/** The uid of the process at the other end of a connected Unix socket (struct ucred { pid, uid, gid }), if readable. */
export function peerUid(socket: Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return undefined;
  const cred = Buffer.alloc(12);
  return sys.getsockoptBuf(fd, SOL_SOCKET, SO_PEERCRED, cred) === 12 ? cred.readUInt32LE(4) : undefined;
}

/**
 * Why the CLI must not talk to the server at `path` whose uid is `peer`, or undefined when it may: the server
 * runs as root or as our own uid. Root also trusts a proxy that dropped root (`user` in the config) when the
 * socket's directory belongs to that uid and sits in a directory only root can write (e.g. /run/ironsocket,
 * which root created and handed over), since nobody else could have put it there.
 */
export function untrustedServer(path: string, peer: number | undefined): string | undefined {
  const me = process.geteuid?.() ?? 0;
  if (peer === undefined) return `cannot read the credentials of the process behind admin socket ${path} (SO_PEERCRED); not sending anything`;
  if (peer === 0 || peer === me) return undefined;
  if (me === 0 && handedOverTo(dirname(path), peer)) return undefined;
  return (
    `refusing to talk to admin socket ${path}: it is served by uid ${peer}, neither you (uid ${me}) nor root, ` +
    'so another user may have created it; nothing was sent (pass --admin-socket with a path in a directory only you can write)'
  );
}

/** `dir` is a real directory owned by `uid`, writable by nobody else, inside a directory only root can write. */
function handedOverTo(dir: string, uid: number): boolean {
  try {
    const d = lstatSync(dir);
    const parent = lstatSync(dirname(dir));
    const closed = (mode: number) => (mode & 0o022) === 0;
    return d.isDirectory() && d.uid === uid && closed(d.mode) && parent.isDirectory() && parent.uid === 0 && closed(parent.mode);
  } catch {
    return false;
  }
}
