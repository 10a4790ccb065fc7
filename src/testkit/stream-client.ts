// Test support: a TLS client that streams a deterministic byte sequence up while verifying the one coming down.
import tls from 'node:tls';
import { StreamVerifier, writeStream } from './backends.js';

export interface StreamResult {
  seed: string;
  sent: number;
  received: number;
  ok: boolean;
  mismatchAt: number;
  resets: number;
}

/**
 * Connects to a proxy in front of `streamBackend()`, announces `SEED <seed> <n>`, sends n bytes of
 * stream(seed/up) and verifies n bytes of stream(seed/down), ending when both directions finish.
 */
export function streamThrough(port: number, seed: string, n: number, opts: tls.ConnectionOptions = {}): Promise<StreamResult> {
  return new Promise((resolve, reject) => {
    const verifier = new StreamVerifier(`${seed}/down`);
    let resets = 0;
    const s = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, ...opts, ...{ allowHalfOpen: true } });
    s.on('data', (d: Buffer) => verifier.push(d));
    s.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ECONNRESET') resets++;
      reject(new Error(`stream ${seed}: ${e.message}`));
    });
    let downDone = false;
    let upDone = false;
    const settle = () => {
      if (!downDone || !upDone) return;
      resolve({ seed, sent: n, received: verifier.received, ok: verifier.mismatchAt < 0 && verifier.received === n, mismatchAt: verifier.mismatchAt, resets });
      s.destroy();
    };
    s.on('end', () => {
      downDone = true;
      settle();
    });
    s.write(`SEED ${seed} ${n}\n`);
    void writeStream(s, `${seed}/up`, n).then(() =>
      s.end(() => {
        upDone = true;
        settle();
      }),
    );
  });
}
