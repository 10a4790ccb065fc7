// The Poller's waits on the libuv pool are bounded and always end: a process with one idle or closed still exits, and fds are released.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { describe, it } from 'node:test';
import { sys } from './libc.js';
import { EPOLLIN, Poller } from './poller.js';

/** How long a wait on the pool lasts when nothing is ready (POOL_WAIT_MS in poller.ts). */
const IDLE_WAIT_MS = 1000;
const POLLER = new URL('./poller.js', import.meta.url).href;
const LIBC = new URL('./libc.js', import.meta.url).href;

/**
 * Runs `body` in a new node process that has a Poller `p` on the pool watching the read end `r` of a pipe nobody
 * writes, with SIGTERM and SIGINT listeners (as `run` has); the body ends with process.exit. Resolves with how the
 * process ended and how long that took, or with `hung` (then SIGKILLed) when it is still there after `boundMs`.
 */
function exitOf(body: string, boundMs = 5000): Promise<{ code: number | null; ms: number; hung: boolean; out: string }> {
  const script = `
    const { EPOLLIN, Poller } = await import(${JSON.stringify(POLLER)});
    const { sys } = await import(${JSON.stringify(LIBC)});
    const [r] = sys.pipe();
    const p = new Poller();
    p.add(r, EPOLLIN, () => {});
    process.on('SIGTERM', () => {});
    process.on('SIGINT', () => {});
    ${body}
  `;
  const started = Date.now();
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      resolve({ code: null, ms: Date.now() - started, hung: true, out });
    }, boundMs);
    child.once('exit', (code) => {
      clearTimeout(t);
      resolve({ code, ms: Date.now() - started, hung: false, out });
    });
  });
}

const openFds = () => new Set(fs.readdirSync('/proc/self/fd').map(Number));
const kindOf = (fd: number) => {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return '';
  }
};

describe('Poller', () => {
  it('lets a process exit while it waits on the pool for an fd that never becomes ready', async () => {
    // Node's exit joins the pool's threads: an epoll_wait without a timeout held one of them for ever.
    const r = await exitOf(`setTimeout(() => process.exit(3), 300);`);
    assert.equal(r.hung, false, `the process did not exit within 5 s: ${r.out}`);
    assert.equal(r.code, 3);
  });

  it('lets a process exit once the last fd it watched is removed, the poller never closed', async () => {
    const r = await exitOf(`setTimeout(() => { p.remove(r); setTimeout(() => process.exit(3), 50); }, 300);`);
    assert.equal(r.hung, false, `the process did not exit within 5 s: ${r.out}`);
    assert.equal(r.code, 3);
  });

  it('lets a process exit straight after closing it', async () => {
    const r = await exitOf(`setTimeout(() => { p.close(); process.exit(3); }, 300);`);
    assert.equal(r.hung, false, `the process did not exit within 5 s: ${r.out}`);
    assert.equal(r.code, 3);
  });

  it('still sees an fd become ready after idle waits on the pool ran out', async () => {
    const [r, w] = sys.pipe();
    const p = new Poller();
    try {
      const ready = new Promise<number>((resolve) => p.add(r, EPOLLIN, resolve));
      await new Promise((resolve) => setTimeout(resolve, IDLE_WAIT_MS + 300));
      sys.write(w, Buffer.from('x'), 1);
      assert.equal((await ready) & EPOLLIN, EPOLLIN);
    } finally {
      p.close();
      sys.close(r);
      sys.close(w);
    }
  });

  it('closes its epoll and eventfd on close, once the wait in progress has returned', async () => {
    const before = openFds();
    const [r, w] = sys.pipe();
    const p = new Poller();
    p.add(r, EPOLLIN, () => {});
    const mine = [...openFds()].filter((fd) => !before.has(fd) && /\[(eventpoll|eventfd)\]/.test(kindOf(fd)));
    assert.equal(mine.length, 2, 'an epoll and an eventfd');
    p.close();
    const t0 = Date.now();
    while (mine.some((fd) => openFds().has(fd)) && Date.now() - t0 < 3000) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.deepEqual(
      mine.filter((fd) => openFds().has(fd)),
      [],
    );
    assert.ok(Date.now() - t0 < IDLE_WAIT_MS / 2, 'woken by close, not by the wait running out');
    sys.close(r);
    sys.close(w);
  });

  it('ignores modify and remove once closed, and refuses to watch a new fd', () => {
    const [r, w] = sys.pipe();
    const p = new Poller();
    p.close();
    p.modify(r, EPOLLIN);
    p.remove(r);
    assert.throws(() => p.add(r, EPOLLIN, () => {}), /poller closed/);
    sys.close(r);
    sys.close(w);
  });
});
