// Test support for session tickets: a node:tls client that resumes and echoes data, which handshake worker served it, upgrades.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { adminRequest } from '../admin/client.js';
import type { StatusSnapshot } from '../core/types.js';
import { streamChunk } from './backends.js';
import { CLI, eventually, type RunningProxy } from './proxy-process.js';

const run = promisify(execFile);

export type TlsVersion = 'TLSv1.3' | 'TLSv1.2';
export const VERSIONS: TlsVersion[] = ['TLSv1.3', 'TLSv1.2'];

export interface Visit {
  resumed: boolean;
  /** Sessions to resume with: each NewSessionTicket's (TLS 1.3), or the one the connection ended with (TLS 1.2). */
  sessions: Buffer[];
  /** The last ticket the proxy sent (its first 16 bytes name the key that encrypted it). */
  ticket?: Buffer;
  /** Our port: the proxy's `established` line names the client by it. */
  localPort: number;
  /** Every byte sent came back in order (through the backend echo). */
  echoed: boolean;
}

/**
 * Connects (resuming `session` when given), sends `bytes` of a deterministic stream to an echo backend and checks every
 * byte of the echo: after a resumption that proves the record sequence numbers both ways.
 */
export function visit(port: number, version: TlsVersion, session?: Buffer, bytes = 64 * 1024): Promise<Visit> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', rejectUnauthorized: false, minVersion: version, maxVersion: version, session });
    const sessions: Buffer[] = [];
    const sent = streamChunk(`visit-${Math.random()}`, 0, bytes);
    const got: Buffer[] = [];
    let n = 0;
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no full echo within 30 s (${n} of ${bytes} bytes)`));
    }, 30_000);
    s.on('session', (x: Buffer) => sessions.push(x));
    s.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    s.once('secureConnect', () => {
      const resumed = s.isSessionReused();
      const localPort = s.localPort!;
      s.on('data', (d: Buffer) => {
        got.push(d);
        n += d.length;
        if (n < bytes) return;
        clearTimeout(timer);
        // TLS 1.3 tickets come before the echo; TLS 1.2's renewed ticket is in the session it ends with.
        const last = s.getSession();
        if (version === 'TLSv1.2' && last && !sessions.some((x) => x.equals(last))) sessions.push(last);
        const ticket = s.getTLSTicket();
        s.end();
        resolve({ resumed, sessions, ticket, localPort, echoed: Buffer.concat(got).equals(sent) });
      });
      s.write(sent);
    });
  });
}

/** A visit through `proxy`, with what its `established` line says: whether it resumed, and which handshake worker served it. */
export async function visitProxy(
  proxy: RunningProxy,
  version: TlsVersion,
  session?: Buffer,
  bytes?: number,
): Promise<Visit & { logged: { resumed: boolean; handshaker: number } }> {
  const since = proxy.logs().length;
  const v = await visit(proxy.port, version, session, bytes);
  const mine = new RegExp(`"client":"127\\.0\\.0\\.1:${v.localPort}".*"msg":"established"`);
  let line: string | undefined;
  await eventually(
    () =>
      (line = proxy
        .logs()
        .slice(since)
        .find((l) => mine.test(l))) !== undefined,
    10_000,
    `the established line of :${v.localPort}`,
  );
  const o = JSON.parse(line!) as { resumed: boolean; handshaker: number };
  return { ...v, logged: { resumed: o.resumed, handshaker: o.handshaker } };
}

/** Connections the proxy has in handshake now (asked over the admin socket from here: quicker than running the CLI). */
const inHandshake = async (proxy: RunningProxy) =>
  (await adminRequest<StatusSnapshot>(proxy.adminSocket, 'status', undefined, 10_000)).counters.handshakes_in_progress ?? 0;

/**
 * Runs `f` so that its connection goes to handshake worker `worker` of two: a new connection goes to the least busy
 * worker, the first on a tie. For worker 1 a client that never says hello keeps worker 0 busy meanwhile.
 */
export async function onWorker<T>(proxy: RunningProxy, worker: 0 | 1, f: () => Promise<T>): Promise<T> {
  await eventually(async () => (await inHandshake(proxy)) === 0, 20_000, 'no handshake in progress');
  if (worker === 0) return f();
  const blocker = net.connect({ port: proxy.port, host: '127.0.0.1' });
  blocker.on('error', () => {});
  try {
    await eventually(async () => (await inHandshake(proxy)) === 1, 20_000, 'the silent client on worker 0');
    return await f();
  } finally {
    blocker.destroy();
    await eventually(async () => (await inHandshake(proxy)) === 0, 20_000, 'the silent client gone');
  }
}

/** `ironsocket upgrade`, which must succeed with the same pid. */
export async function upgrade(proxy: RunningProxy): Promise<{ generation: number }> {
  const { stdout } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket, '--timeout', '300']);
  const outcome = JSON.parse(stdout) as { ok: boolean; pid: number; generation: number };
  assert.equal(outcome.ok, true);
  assert.equal(outcome.pid, proxy.pid);
  return outcome;
}
