// Readiness for raw fds on a thread with an event loop: one epoll, waited off-thread or inline, so libuv never reads our sockets.
import { EFD_CLOEXEC, EFD_NONBLOCK, sys } from './libc.js';

export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;
/** struct epoll_event is packed on x86-64 (12 bytes) and naturally aligned elsewhere (16). */
export const EPOLL_EVENT_SIZE = process.arch === 'x64' ? 12 : 16;
const DATA_OFFSET = process.arch === 'x64' ? 4 : 8;

export function encodeEvent(buf: Buffer, events: number, fd: number): Buffer {
  buf.fill(0);
  buf.writeUInt32LE(events >>> 0, 0);
  buf.writeUInt32LE(fd, DATA_OFFSET);
  return buf;
}

export function decodeEvent(buf: Buffer, i: number): { events: number; fd: number } {
  const o = i * EPOLL_EVENT_SIZE;
  return { events: buf.readUInt32LE(o), fd: buf.readUInt32LE(o + DATA_OFFSET) };
}

export type ReadyHandler = (events: number) => void;

const MAX_EVENTS = 256;
/**
 * A wait on the pool is bounded: a pool thread stuck in epoll_wait is one Node must join at exit (and a worker
 * thread at its end), so an unbounded wait nobody wakes hangs the process, deaf to signals. Re-arming once a
 * second costs nothing that matters: it happens only when idle.
 */
export const POOL_WAIT_MS = 1000;

export class Poller {
  private readonly ep = sys.epollCreate();
  private readonly wake = sys.eventfd(EFD_NONBLOCK | EFD_CLOEXEC);
  private readonly handlers = new Map<number, ReadyHandler>();
  private readonly events = Buffer.allocUnsafeSlow(MAX_EVENTS * EPOLL_EVENT_SIZE);
  private readonly ev = Buffer.alloc(EPOLL_EVENT_SIZE);
  private waiting = false;
  private closed = false;
  /** Events seen on the last wait: inline mode, 0 → the next one may block briefly; else 0 → the next waits on the pool. */
  private lastBatch = 0;

  /**
   * `inline`: wait on this thread between event-loop turns (epoll_wait for at most 2 ms when idle)
   * instead of on a libuv pool thread: for worker threads, so that many
   * of them do not exhaust the pool.
   */
  constructor(private readonly inline = false) {
    sys.epollCtl(this.ep, EPOLL_CTL_ADD, this.wake, encodeEvent(this.ev, EPOLLIN, this.wake));
  }

  add(fd: number, events: number, handler: ReadyHandler): void {
    if (this.closed) throw new Error(`poller closed: cannot watch fd ${fd}`);
    this.handlers.set(fd, handler);
    sys.epollCtl(this.ep, EPOLL_CTL_ADD, fd, encodeEvent(this.ev, events, fd));
    this.arm();
  }

  modify(fd: number, events: number): void {
    if (this.closed) return; // its epoll may be closed already, and its number reused
    sys.epollCtl(this.ep, EPOLL_CTL_MOD, fd, encodeEvent(this.ev, events, fd));
  }

  remove(fd: number): void {
    if (!this.handlers.delete(fd)) return;
    try {
      sys.epollCtl(this.ep, EPOLL_CTL_DEL, fd, encodeEvent(this.ev, 0, fd));
    } catch {
      // already closed: the kernel dropped it from the set
    }
  }

  get size(): number {
    return this.handlers.size;
  }

  /**
   * Wakes a wait in progress; the epoll and eventfd are closed once no thread waits on them (closing an fd another
   * thread is in epoll_wait on does not wake it), at once when none does, else when that wait returns.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handlers.clear();
    if (!this.waiting) return this.release();
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n);
    sys.write(this.wake, one, 8);
  }

  private release(): void {
    sys.close(this.wake);
    sys.close(this.ep);
  }

  private arm(): void {
    if (this.waiting || this.closed || this.handlers.size === 0) return;
    this.waiting = true;
    const settle = (n: number) => {
      this.waiting = false;
      if (this.closed) return this.release();
      this.lastBatch = Math.max(0, n);
      this.dispatch(n);
      this.arm();
    };
    // Inline mode always waits on this thread (briefly when idle). Otherwise, when busy, the next events are often
    // ready already: look without leaving the thread, and wait on the pool (a thread hop each way) only when none are.
    // Either look is a turn later, so that the event loop's other work runs between.
    if (this.inline || this.lastBatch > 0) {
      setImmediate(() => settle(this.closed ? 0 : sys.epollWait(this.ep, this.events, MAX_EVENTS, this.inline && this.lastBatch === 0 ? 2 : 0)));
      return;
    }
    sys.epollWaitAsync(this.ep, this.events, MAX_EVENTS, POOL_WAIT_MS, settle);
  }

  private dispatch(n: number): void {
    for (let i = 0; i < n; i++) {
      const { events, fd } = decodeEvent(this.events, i);
      if (fd === this.wake) {
        sys.read(this.wake, Buffer.alloc(8), 8);
        continue;
      }
      const h = this.handlers.get(fd);
      if (!h) continue;
      try {
        h(events);
      } catch (e) {
        process.emitWarning(`poller handler for fd ${fd} threw: ${(e as Error).stack}`);
      }
    }
  }
}
