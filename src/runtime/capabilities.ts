// Transparent listeners need CAP_NET_ADMIN for the life of the process: checked once at start (and by `check`, and on reload) instead of failing each connection.
import fs from 'node:fs';

export const CAP_NET_ADMIN = 12;
/** The kernel accepts IP_TRANSPARENT with either capability. */
export const CAP_NET_RAW = 13;

/** The process's effective capability set (CapEff in /proc/self/status), as a bit mask. */
export function effectiveCaps(status = fs.readFileSync('/proc/self/status', 'utf8')): bigint {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  return m ? BigInt(`0x${m[1]}`) : 0n;
}

const has = (caps: bigint, cap: number) => (caps & (1n << BigInt(cap))) !== 0n;

/** What a configuration with transparent listeners needs; the fix named in every refusal. */
const FIX =
  'run it as a non-root user that keeps the capability, with no `user`/`group` in the config: under systemd, ' +
  'User= with AmbientCapabilities=CAP_NET_ADMIN and CapabilityBoundingSet= including it (see contrib/ironsocket.service); or run it as root without `user`';

/**
 * Why this process cannot serve the configuration's transparent listeners, or undefined when it can (or
 * has none). Dropping from root to `user` clears every capability, so that is refused too.
 */
export function transparentProblem(
  config: { listeners: readonly { name: string; transparent: boolean }[]; user?: string },
  caps = effectiveCaps(),
  uid = process.getuid!(),
): string | undefined {
  const names = config.listeners.filter((l) => l.transparent).map((l) => l.name);
  if (names.length === 0) return undefined;
  const which = `transparent = true (listener ${names.join(', ')})`;
  const drops = uid === 0 && config.user !== undefined && config.user !== 'root' && config.user !== '0';
  if (drops) {
    return `${which} needs CAP_NET_ADMIN for every backend connection, and switching to user = "${config.user}" after binding drops it; ${FIX}`;
  }
  if (!has(caps, CAP_NET_ADMIN) && !has(caps, CAP_NET_RAW)) {
    return `${which} needs CAP_NET_ADMIN for every backend connection, and this process lacks it (CapEff ${caps.toString(16).padStart(16, '0')}); ${FIX}`;
  }
  return undefined;
}
