// Private key and session ticket key files must be readable by the proxy's user alone: says so (a warning, not a refusal) when others can read one.
import { stat } from 'node:fs/promises';

/**
 * The warning for a private key file that its group or other users may read (any of mode 0o077), else
 * undefined. The mode is the target's when the path is a symlink: that is what other users can open. `what` names the
 * kind of file in the message.
 */
export async function keyPermissionWarning(file: string, what = 'private key'): Promise<string | undefined> {
  let mode: number;
  try {
    mode = (await stat(file)).mode & 0o777;
  } catch {
    return undefined; // reading it reports the problem
  }
  if ((mode & 0o077) === 0) return undefined;
  const octal = mode.toString(8).padStart(4, '0');
  return `${what} ${file} has mode ${octal}: its group or other users can read it; run chmod 600 ${file}`;
}
