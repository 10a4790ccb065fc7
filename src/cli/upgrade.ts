// `ironsocket upgrade`: asks the proxy to exec itself, then waits across the exec for the new image to report the outcome.
import { adminRequest, AdminError } from '../admin/client.js';
import type { UpgradeRecord } from '../core/types.js';

interface UpgradeAccepted {
  attempt: string;
  generation: number;
  pid: number;
}

interface StatusWithUpgrade {
  pid: number;
  generation?: number;
  lastUpgrade?: UpgradeRecord;
}

/** The upgrade record status shows (less its attempt id and time), with the PID and generation after it. */
export type UpgradeOutcome = Omit<UpgradeRecord, 'attempt' | 'at'> & { pid: number; generation: number };

/** Requests the upgrade and polls the admin socket (which disappears briefly during exec) until this attempt's result appears. */
export async function requestUpgrade(socket: string, timeoutS: number): Promise<UpgradeOutcome> {
  const accepted = await adminRequest<UpgradeAccepted>(socket, 'upgrade', undefined, 10_000);
  const end = Date.now() + timeoutS * 1000;
  let last: unknown;
  while (Date.now() < end) {
    await new Promise((r) => setTimeout(r, 100));
    let s: StatusWithUpgrade;
    try {
      s = await adminRequest<StatusWithUpgrade>(socket, 'upgrade-result', undefined, 5_000);
    } catch (e) {
      // Expected while the process execs and the new image re-creates the socket.
      // ADMIN_FAILED too: a freshly exec'ed image may answer "busy" while it is still taking connections over.
      if (
        e instanceof AdminError &&
        (e.code === 'ADMIN_UNREACHABLE' || e.code === 'ADMIN_TIMEOUT' || e.code === 'ADMIN_PROTOCOL' || e.code === 'ADMIN_FAILED')
      ) {
        last = e;
        continue;
      }
      throw e;
    }
    const u = s.lastUpgrade;
    if (!u || u.attempt !== accepted.attempt) continue;
    if (u.ok && (s.generation ?? 0) <= accepted.generation) continue;
    if (s.pid !== accepted.pid) return { ok: false, pid: s.pid, generation: s.generation ?? 0, error: `the PID changed from ${accepted.pid} to ${s.pid}` };
    const { attempt: _attempt, at: _at, ...record } = u;
    return { ...record, pid: s.pid, generation: s.generation ?? 0 };
  }
  throw new Error(`no upgrade result within ${timeoutS} s${last ? ` (last error: ${(last as Error).message})` : ''}`);
}
