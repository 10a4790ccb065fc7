// Handshake load from `openssl s_time` (C clients: cheap per handshake, so several of them load a proxy harder than
// node:tls ones): `procs` processes at once, each connecting back-to-back (dist/testkit/s-time.js says what a
// connection is). Every connection is counted as s_time marked it, full or resumed, so a "resumed" row hides no full one.
import { sTime } from '../../dist/testkit/s-time.js';

/**
 * Runs `procs` s_time processes against `port` at once; `cpuMs()` reads the peer's CPU time. Returns handshakes per
 * second (connections of all processes ÷ the window from the first spawn to the last exit), the peer's CPU ms per
 * handshake over that window, and how many connections were full or resumed.
 */
export async function sTimeRun({ port, reuse, procs, seconds, cpuMs }) {
  const t0 = performance.now();
  const cpu0 = cpuMs();
  const runs = await Promise.all(Array.from({ length: procs }, () => sTime(port, { reuse, seconds })));
  const cpu1 = cpuMs();
  const wall = (performance.now() - t0) / 1000;
  const sum = (k) => runs.reduce((n, r) => n + r[k], 0);
  const count = sum('count');
  return { rate: count / wall, cpuPerHandshake: (cpu1 - cpu0) / count, count, full: sum('full'), resumed: sum('resumed'), wall };
}
