// Test support: a paced TLS client that streams a deterministic sequence to an echo backend and verifies every byte coming back.
import tls from 'node:tls';
import { StreamVerifier, streamChunk } from './backends.js';

export interface EchoStream {
  /** Stops sending, waits for every sent byte to come back, then closes; resolves with the tally. */
  finish(): Promise<{ seed: string; sent: number; received: number; ok: boolean; mismatchAt: number; errors: string[] }>;
  sent(): number;
  received(): number;
  /** Stops at once and closes (test clean-up on failure: no timer may outlive the test). */
  abort(): void;
}

/** Opens one TLS connection and sends `chunk` bytes every `everyMs` until finish() is called. */
export function echoStream(port: number, seed: string, chunk: number, everyMs: number): Promise<EchoStream> {
  return new Promise((resolve, reject) => {
    const verifier = new StreamVerifier(seed);
    const errors: string[] = [];
    let sent = 0;
    let timer: NodeJS.Timeout | undefined;
    let onDrained: (() => void) | undefined;
    const s = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false });
    s.on('data', (d: Buffer) => {
      verifier.push(d);
      if (verifier.received >= sent && onDrained) onDrained();
    });
    s.on('error', (e: NodeJS.ErrnoException) => {
      errors.push(`${e.code ?? ''} ${e.message}`);
      onDrained?.();
    });
    s.once('error', reject);
    s.once('secureConnect', () => {
      s.off('error', reject);
      timer = setInterval(() => {
        if (s.writableLength > 4 * chunk) return; // paced, never queueing without bound
        s.write(streamChunk(seed, sent, chunk));
        sent += chunk;
      }, everyMs);
      resolve({
        sent: () => sent,
        received: () => verifier.received,
        abort: () => {
          clearInterval(timer);
          s.destroy();
        },
        finish: () =>
          new Promise((done) => {
            clearInterval(timer);
            const settle = () => {
              onDrained = undefined;
              s.end();
              s.destroy();
              done({
                seed,
                sent,
                received: verifier.received,
                ok: verifier.mismatchAt < 0 && verifier.received === sent && errors.length === 0,
                mismatchAt: verifier.mismatchAt,
                errors,
              });
            };
            onDrained = settle;
            if (verifier.received >= sent || errors.length) settle();
          }),
      });
    });
  });
}
