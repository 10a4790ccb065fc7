// Drops root once every socket is bound (`user`/`group` in the config), keeping the admin socket usable by the new user.
import { accessSync, chownSync, constants, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { execFileSync } from 'node:child_process';

export class PrivilegeError extends Error {}

/** uid and gid of a user (and group) name or number, via getent (no native binding needed). */
function lookup(db: 'passwd' | 'group', name: string): { id: number; gid?: number } {
  if (/^\d+$/.test(name)) return { id: Number(name) };
  let line: string;
  try {
    line = execFileSync('getent', [db, name], { encoding: 'utf8' }).trim().split('\n')[0] ?? '';
  } catch {
    throw new PrivilegeError(`${db === 'passwd' ? 'user' : 'group'} "${name}" does not exist`);
  }
  const f = line.split(':');
  return { id: Number(f[2]), gid: db === 'passwd' ? Number(f[3]) : undefined };
}

export interface Identity {
  uid: number;
  gid: number;
}

/**
 * Who `user` and `group` name (a name or a number; without `group`, the user's primary group), or undefined when
 * neither is set. Throws PrivilegeError for a name that does not exist. Run and check both ask this before binding.
 */
export function identityOf(opts: { user?: string; group?: string }): Identity | undefined {
  if (opts.user === undefined && opts.group === undefined) return undefined;
  const u = opts.user !== undefined ? lookup('passwd', opts.user) : undefined;
  const uid = u?.id ?? process.getuid!();
  const gid = opts.group !== undefined ? lookup('group', opts.group).id : (u?.gid ?? process.getgid!());
  return { uid, gid };
}

/** Why this process cannot become `who`, or undefined: root can, and one already running as `who` (after an upgrade's exec) need not. */
export function switchProblem(who: Identity): string | undefined {
  const uid = process.getuid!();
  const gid = process.getgid!();
  if (uid === 0 || (uid === who.uid && gid === who.gid)) return undefined;
  return `user/group: switching to uid ${who.uid} gid ${who.gid} needs root; running as uid ${uid} gid ${gid}`;
}

/**
 * Switches to `who` (`user`/`group`, looked up by identityOf) for good. As root: chowns the admin socket and its
 * directory first, so the next image (an upgrade keeps the new uid) can replace it. Already running as `who`
 * (after an upgrade's exec): nothing to do. As anyone else: an error.
 */
export function dropPrivileges(
  opts: { user?: string; group?: string; adminSocket: string },
  who: Identity | undefined = identityOf(opts),
): Identity | undefined {
  if (who === undefined) return undefined;
  const problem = switchProblem(who);
  if (problem !== undefined) throw new PrivilegeError(problem);
  if (process.getuid!() !== 0) return who;
  const { uid, gid } = who;
  for (const path of [dirname(opts.adminSocket), opts.adminSocket]) {
    // The directory only when it is ours to give: a private (0700) one like the one we create, never e.g. /run itself.
    const st = statSync(path);
    if (path !== opts.adminSocket && (st.uid !== 0 || (st.mode & 0o077) !== 0)) continue;
    chownSync(path, uid, gid);
  }
  const initgroups = (process as unknown as { initgroups?: (user: string | number, extra: number) => void }).initgroups;
  if (opts.user !== undefined && initgroups) initgroups(opts.user, gid);
  else process.setgroups!([gid]);
  process.setgid!(gid);
  process.setuid!(uid);
  return { uid, gid };
}

/**
 * What an in-place upgrade execs, checked as the user the process now runs as: the node binary
 * (`process.execPath`) and the script (`process.argv[1]`). A binary or script under a directory that user cannot
 * enter (a node under /root, a checkout in a 0700 home) serves today and refuses every upgrade later; said once,
 * at start, it is a warning rather than a surprise. Undefined when both are reachable.
 */
export function upgradeReachProblem(files = { node: process.execPath, script: process.argv[1] }): string | undefined {
  const problems: string[] = [];
  const check = (what: string, file: string | undefined, mode: number) => {
    if (file === undefined) return;
    try {
      accessSync(file, mode);
    } catch (e) {
      problems.push(`${what} ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
  };
  check('the node binary', files.node, constants.X_OK);
  check('the script', files.script, constants.R_OK);
  if (problems.length === 0) return undefined;
  return `in-place upgrades will fail: uid ${process.getuid!()} cannot reach ${problems.join(' nor ')}; install them where it can`;
}
