// One `openssl s_time` client: back-to-back connections to a port for some seconds, each marked full or resumed by s_time.
import { openssl } from './zero-rtt.js';

export interface STimeResult {
  /** Connections completed in the timed loop. */
  count: number;
  /** Of those, full handshakes ('*') and resumed ones ('r'), as s_time marked them. */
  full: number;
  resumed: number;
}

/**
 * Runs `openssl s_time` against 127.0.0.1:`port` for `seconds`: each connection is a TLS 1.3 handshake, one HTTP/1.0
 * request read to its end (-www /: the backend must answer and close) and a close without close_notify. `reuse`
 * resumes the session of the process's first connection (TLS 1.3 tickets: reading the answer is what receives them).
 */
export async function sTime(port: number, opts: { reuse: boolean; seconds: number }): Promise<STimeResult> {
  const args = ['s_time', '-connect', `127.0.0.1:${port}`, opts.reuse ? '-reuse' : '-new', '-time', String(opts.seconds), '-tls1_3', '-www', '/'];
  const { code, out } = await openssl(args, { timeoutMs: opts.seconds * 1000 + 60_000 });
  const m = /(\d+) connections in (\d+) real seconds/.exec(out);
  if (!m) throw new Error(`s_time exited (code ${code}) without a count: ${out.trim().split('\n').slice(-2).join(' / ')}`);
  // The marks are the lines of '*' and 'r' only; the rest is prose.
  const marks = out
    .split('\n')
    .filter((l) => /^[*r]+$/.test(l))
    .join('');
  return { count: Number(m[1]), full: marks.split('*').length - 1, resumed: marks.split('r').length - 1 };
}
