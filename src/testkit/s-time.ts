// One `openssl s_time` client: back-to-back connections to a port for some seconds, each marked full or resumed by s_time.
import { spawn } from 'node:child_process';

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
export function sTime(port: number, opts: { reuse: boolean; seconds: number }): Promise<STimeResult> {
  return new Promise((resolve, reject) => {
    const args = ['s_time', '-connect', `127.0.0.1:${port}`, opts.reuse ? '-reuse' : '-new', '-time', String(opts.seconds), '-tls1_3', '-www', '/'];
    const c = spawn('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-2000)));
    c.once('error', reject);
    // 'close', not 'exit': the count is the last thing printed, and 'exit' may come before stdout is read.
    c.once('close', (code) => {
      const m = /(\d+) connections in (\d+) real seconds/.exec(out);
      if (!m) return reject(new Error(`s_time exited (code ${code}) without a count: ${(err || out).trim().split('\n').slice(-2).join(' / ')}`));
      // The marks are the lines of '*' and 'r' only; the rest is prose.
      const marks = out
        .split('\n')
        .filter((l) => /^[*r]+$/.test(l))
        .join('');
      resolve({ count: Number(m[1]), full: marks.split('*').length - 1, resumed: marks.split('r').length - 1 });
    });
  });
}
