// Shared by the `npm run bench` processes (orchestrator, backend, load generator): the verifiable byte pattern that
// every throughput stream carries, a clock comparable across processes, and request/reply over the fork IPC channel.
import { adminRequest } from '../../dist/admin/client.js';
import { streamChunk } from '../../dist/testkit/backends.js';

// A prime period: a lost, repeated or reordered TLS record (≤ 16 KiB) shifts the pattern and is caught.
const PERIOD = 65521;
const MAX_SLICE = 256 * 1024;
const BASE = streamChunk('ironsocket-bench', 0, PERIOD);
const PATTERN = Buffer.concat(Array.from({ length: Math.ceil(MAX_SLICE / PERIOD) + 1 }, () => BASE)); // periodic

/** `len` (≤ 256 KiB) bytes of the endless pattern from stream offset `off`, without a copy. */
export const patternAt = (off, len) => PATTERN.subarray(off % PERIOD, (off % PERIOD) + len);

/** Whether `d` is exactly the pattern at stream offset `off` (memcmp only: cheap next to the TLS work). */
export function matchesPattern(d, off) {
  for (let i = 0; i < d.length; i += MAX_SLICE) {
    const n = Math.min(MAX_SLICE, d.length - i);
    if (!d.subarray(i, i + n).equals(patternAt(off + i, n))) return false;
  }
  return true;
}

/** Milliseconds since the epoch, sub-millisecond and comparable between processes. */
export const now = () => performance.timeOrigin + performance.now();

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Child side: answers {id, cmd, arg} with {id, ok, value | error}; exits when the parent goes away. */
export function serve(handlers) {
  process.on('disconnect', () => process.exit(0));
  process.on('message', async ({ id, cmd, arg }) => {
    try {
      process.send({ id, ok: true, value: await handlers[cmd](arg) });
    } catch (e) {
      process.send({ id, ok: false, error: e?.message ?? String(e) });
    }
  });
}

/** Parent side: returns call(cmd, arg) → the child's answer (rejects if the child answers an error or exits). */
export function rpc(child, name) {
  let next = 0;
  const waiting = new Map();
  child.on('message', ({ id, ok, value, error }) => {
    const w = waiting.get(id);
    waiting.delete(id);
    if (ok) w?.resolve(value);
    else w?.reject(new Error(`${name}: ${error}`));
  });
  child.once('exit', (code, signal) => {
    for (const w of waiting.values()) w.reject(new Error(`${name} exited (code ${code}, signal ${signal})`));
    waiting.clear();
  });
  return (cmd, arg) =>
    new Promise((resolve, reject) => {
      const id = next++;
      waiting.set(id, { resolve, reject });
      child.send({ id, cmd, arg });
    });
}

/**
 * An error that means a result is wrong (a byte, a certificate, a protocol), not that a peer was slow or ran out
 * of capacity: it fails the run whoever it comes from. Any failure of Iron Socket's fails it too; a peer's other
 * failures are reported beside the table.
 */
export function wrong(message) {
  return Object.assign(new Error(message), { wrong: true });
}

/**
 * Triggers Iron Socket's in-place upgrade the way a systemd ExecReload= would (SIGUSR2 to `pid`) and polls the admin
 * socket (down across the exec) for its outcome: `{ before, after, u }`, the `upgrade-result` answers before and
 * after and the new `lastUpgrade` (which may say it failed). `alive()` false stops the wait with the proxy's story.
 */
export async function upgradeBySignal(adminSocket, pid, alive = () => true, timeoutMs = 120_000) {
  const before = await adminRequest(adminSocket, 'upgrade-result');
  process.kill(pid, 'SIGUSR2');
  for (const end = Date.now() + timeoutMs; Date.now() < end; ) {
    await sleep(100);
    if (!alive()) throw new Error('the proxy exited during the upgrade');
    const r = await adminRequest(adminSocket, 'upgrade-result').catch(() => undefined);
    const u = r?.lastUpgrade;
    if (!u || u.attempt === before.lastUpgrade?.attempt) continue;
    if (u.ok && r.generation <= before.generation) continue;
    return { before, after: r, u };
  }
  throw new Error(`no upgrade outcome within ${timeoutMs / 1000} s`);
}
