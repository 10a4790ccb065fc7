// Test support: a client / proxy / backend topology of network namespaces built with iproute2 only, for transparent-source tests.
import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

export type Role = 'client' | 'proxy' | 'backend';

export interface Addrs {
  client: string;
  /** The proxy's address on the client side: the client's default gateway. */
  proxyClientSide: string;
  /** The proxy's address on the backend side: the backend's default gateway. */
  proxyBackendSide: string;
  backend: string;
}

export interface Topology {
  names: Record<Role, string>;
  addrs: { v4: Addrs; v6: Addrs };
  /** Runs a command in a namespace and returns its stdout; throws with its stderr on failure. */
  exec(ns: Role, cmd: string, args: string[]): string;
  /** Starts a command in a namespace (`ip netns exec`). */
  spawnIn(ns: Role, cmd: string, args: string[], opts?: SpawnOptions): ChildProcess;
  /** Deletes the namespaces (and so their veths); idempotent, and run at process exit. */
  destroy(): void;
}

/** Policy-routing table for the backend's replies to client addresses. */
const TABLE = '100';
let counter = 0;
const live = new Set<Topology>();

/** Runs `ip` with a message that says which command failed and why. */
function ip(args: string[]): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as Error & { code?: string; stderr?: string };
    const why = err.code === 'ENOENT' ? 'iproute2 is not installed (no `ip` on PATH)' : (err.stderr || err.message).trim();
    throw new Error(`ip ${args.join(' ')}: ${why}`);
  }
}

function tryDelete(name: string): void {
  try {
    execFileSync('ip', ['netns', 'delete', name], { stdio: 'ignore' });
  } catch {
    // already gone
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Deletes namespaces left by runs that crashed before their exit handler ran (their pid is gone). */
function sweepStale(): void {
  for (const line of ip(['netns', 'list']).split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = /^isock-(\d+)-\d+-(client|proxy|backend)$/.exec(name);
    if (m && Number(m[1]) !== process.pid && !alive(Number(m[1]))) tryDelete(name);
  }
}

process.on('exit', () => {
  for (const t of live) t.destroy();
});

/**
 * Builds client (x.1.2) — (x.1.1) proxy (x.2.1) — (x.2.2) backend, for x = 10.<octet> and fd00:<octet>::/48.
 * The client and the backend route everything via the proxy; the proxy does not forward. In the proxy,
 * packets arriving from the backend for a client address are routed to `lo` as local (table 100), so a
 * transparent socket bound to the client's address receives the backend's replies.
 */
export function createTopology(opts: { octet?: number } = {}): Topology {
  if (process.getuid?.() !== 0) throw new Error('the netns topology needs root (ip netns add, CAP_SYS_ADMIN and CAP_NET_ADMIN)');
  const octet = opts.octet ?? 77;
  sweepStale();
  const id = `isock-${process.pid}-${counter++}`;
  const names: Record<Role, string> = { client: `${id}-client`, proxy: `${id}-proxy`, backend: `${id}-backend` };
  const v4 = (net: number, host: number) => `10.${octet}.${net}.${host}`;
  const v6 = (net: number, host: number) => `fd00:${octet}:${net}::${host}`;
  const addrs = {
    v4: { client: v4(1, 2), proxyClientSide: v4(1, 1), proxyBackendSide: v4(2, 1), backend: v4(2, 2) },
    v6: { client: v6(1, 2), proxyClientSide: v6(1, 1), proxyBackendSide: v6(2, 1), backend: v6(2, 2) },
  };
  let destroyed = false;
  const topo: Topology = {
    names,
    addrs,
    exec(ns, cmd, args) {
      return ip(['netns', 'exec', names[ns], cmd, ...args]);
    },
    spawnIn(ns, cmd, args, spawnOpts = {}) {
      return spawn('ip', ['netns', 'exec', names[ns], cmd, ...args], spawnOpts);
    },
    destroy() {
      if (destroyed) return;
      destroyed = true;
      live.delete(topo);
      for (const n of Object.values(names)) tryDelete(n);
    },
  };
  live.add(topo);
  try {
    for (const n of Object.values(names)) {
      tryDelete(n); // a namespace of this name can only be a leftover of an earlier process with our pid
      ip(['netns', 'add', n]);
      ip(['-n', n, 'link', 'set', 'lo', 'up']);
    }
    const { client: c, proxy: p, backend: b } = names;
    // The veths are created inside the namespaces, so their names never clash with the host's or another run's.
    ip(['-n', p, 'link', 'add', 'to-client', 'type', 'veth', 'peer', 'name', 'to-proxy', 'netns', c]);
    ip(['-n', p, 'link', 'add', 'to-backend', 'type', 'veth', 'peer', 'name', 'to-proxy', 'netns', b]);
    // Fixed link-local addresses without DAD: until a veth has a usable link-local address, the proxy cannot
    // solicit the backend's MAC for a packet from a transparent (non-local) IPv6 source, which delays the first SYN.
    const side = (ns: string, dev: string, a4: string, a6: string, gw?: [string, string]) => {
      ip(['-n', ns, 'link', 'set', dev, 'addrgenmode', 'none']);
      ip(['-n', ns, 'addr', 'add', `${a4}/24`, 'dev', dev]);
      ip(['-n', ns, '-6', 'addr', 'add', `${a6}/64`, 'dev', dev, 'nodad']);
      ip(['-n', ns, '-6', 'addr', 'add', `fe80::${gw ? 2 : 1}/64`, 'dev', dev, 'nodad']);
      ip(['-n', ns, 'link', 'set', dev, 'up']);
      if (gw) {
        ip(['-n', ns, 'route', 'add', 'default', 'via', gw[0]]);
        ip(['-n', ns, '-6', 'route', 'add', 'default', 'via', gw[1]]);
      }
    };
    side(p, 'to-client', addrs.v4.proxyClientSide, addrs.v6.proxyClientSide);
    side(p, 'to-backend', addrs.v4.proxyBackendSide, addrs.v6.proxyBackendSide);
    side(c, 'to-proxy', addrs.v4.client, addrs.v6.client, [addrs.v4.proxyClientSide, addrs.v6.proxyClientSide]);
    side(b, 'to-proxy', addrs.v4.backend, addrs.v6.backend, [addrs.v4.proxyBackendSide, addrs.v6.proxyBackendSide]);
    // Policy routing: what arrives from the backend for a client address is local here, not to be forwarded.
    const clientNets: [string, string][] = [
      ['-4', `10.${octet}.1.0/24`],
      ['-6', `fd00:${octet}:1::/64`],
    ];
    for (const [fam, clientNet] of clientNets) {
      ip(['-n', p, fam, 'rule', 'add', 'iif', 'to-backend', 'lookup', TABLE, 'pref', '100']);
      ip(['-n', p, fam, 'route', 'add', 'local', clientNet, 'dev', 'lo', 'table', TABLE]);
    }
  } catch (e) {
    topo.destroy();
    throw e;
  }
  return topo;
}
