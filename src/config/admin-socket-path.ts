// Where the admin socket lives by default: a directory no other user can create before us (not /tmp, which anyone can).
import { lstatSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

/** The directory root's proxy uses; only root can create it, and the privilege drop hands it to `user`. */
export const ROOT_ADMIN_DIR = '/run/ironsocket';

/**
 * $XDG_RUNTIME_DIR/ironsocket/admin.sock (the per-user runtime directory, which only that user can write);
 * /run/ironsocket/admin.sock as root, and also for a user to whom root handed /run/ironsocket (a proxy that
 * dropped root with `user`, after its upgrade, and the CLI run as that user); otherwise
 * ~/.local/state/ironsocket/admin.sock, under the user's own home.
 */
export function defaultAdminSocketPath(env: NodeJS.ProcessEnv = process.env, rootDir = ROOT_ADMIN_DIR): string {
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'ironsocket', 'admin.sock');
  const uid = process.getuid?.() ?? 0;
  if (uid === 0 || handedOver(rootDir, uid)) return join(rootDir, 'admin.sock');
  return join(env.HOME || homedir(), '.local', 'state', 'ironsocket', 'admin.sock');
}

/** `dir` is a real directory owned by `uid` in a parent only root can write: root made it and gave it away. */
function handedOver(dir: string, uid: number): boolean {
  try {
    const d = lstatSync(dir);
    const parent = lstatSync(dirname(dir));
    return d.isDirectory() && d.uid === uid && parent.isDirectory() && parent.uid === 0 && (parent.mode & 0o022) === 0;
  } catch {
    return false;
  }
}
