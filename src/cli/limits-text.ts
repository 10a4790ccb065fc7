// The connection limits and idle policy in words, as `ironsocket check` and the start banner print them.
import type { ProxyConfig } from '../core/types.js';
import { formatDuration } from './status.js';

type Limits = Pick<ProxyConfig, 'maxConnections' | 'maxConnectionsPerSource' | 'maxHandshakesPerSource' | 'idleTimeoutMs'>;

const perSource = (n: number, what: string) => (n === 0 ? `no limit on ${what}` : `${n} ${what}`);

/** [label, text] pairs: "limits" and "idle timeout". */
export function limitsLines(c: Limits): Array<[label: string, text: string]> {
  return [
    [
      'limits',
      `${c.maxConnections} connections; per source (IPv4 address, IPv6 /64): ${perSource(c.maxConnectionsPerSource, 'connections')}, ${perSource(c.maxHandshakesPerSource, 'in handshake')}`,
    ],
    [
      'idle timeout',
      c.idleTimeoutMs === 0
        ? 'none: idle connections stay open (websockets, databases); set [timeouts] idle to close them'
        : `${formatDuration(c.idleTimeoutMs)}: a connection with no traffic either way for that long is closed`,
    ],
  ];
}
