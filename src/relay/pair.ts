// One relayed connection: client plaintext ⇄ backend bytes with bounded buffers, half-close and alerts, driven by readiness.
import { EAGAIN, EINTR, SHUT_WR, errnoName, sys } from '../kernel/libc.js';
import { EPOLLIN, EPOLLOUT } from '../kernel/poller.js';
import { ALERT, type ClientRead, type ClientSide } from './client-side.js';
import { NON_DATA_BURST, NON_DATA_PER_SECOND, NonDataAllowance, NoteLimiter, TURN_BYTES, TURN_READS } from './budget.js';
import { PipePool, type Pipe, type PipeLoad } from './pipes.js';
import { halfCloseFlags, halfCloseOf, type CloseCause, type HalfClose, type ConnectionInfo, type ConnectionSnapshot } from '../core/connection.js';

/** Bytes one splice moves at most: a default pipe's capacity. */
const PIPE_CHUNK = 64 * 1024;

export interface PairHost {
  /** Sets the epoll interest of an fd. */
  interest(fd: number, events: number): void;
  /** Called once when the pair has closed both fds. */
  closed(pair: Pair, reason: string, level: 'info' | 'warn', cause: CloseCause): void;
  log(level: 'info' | 'warn' | 'debug', id: string, msg: string): void;
  /** Pipes for splice (kTLS connections move bytes without copying them through JavaScript). */
  readonly pipes?: PipePool;
  /** Called when the half-close state (snapshot().flags) has changed. */
  flagsChanged?(pair: Pair): void;
}

/**
 * A connection's own splice pipes, one per direction, in place of the shared pool's (with the fd
 * store: deposited with the connection, they keep bytes in flight across a crash). `held`: bytes
 * already in them (found there after a restart). The pair never closes them: its host does.
 */
export interface OwnPipes {
  c2b: Pipe;
  b2c: Pipe;
  held?: { c2b: number; b2c: number };
}

/** Plaintext bytes still to be written in one direction (at most one read's worth: the bound). */
interface Pending {
  buf: Buffer;
  off: number;
}

export class Pair {
  bytesIn = 0;
  bytesOut = 0;
  lastActivity = Date.now();
  private c2b: Pending | undefined;
  private b2c: Pending | undefined;
  /** The same, when the bytes wait in a pipe (spliced). At most one of c2b / c2bPipe is set. */
  private c2bPipe: PipeLoad | undefined;
  private b2cPipe: PipeLoad | undefined;
  /** How far each direction has closed (up: client → backend, down: backend → client). */
  private half: HalfClose = { up: 'open', down: 'open' };
  private done = false;
  private cEvents = -1;
  private bEvents = -1;
  /** The half-close state as last reported to the host (flagsChanged). */
  private lastFlags: string;
  private readonly nonData = new NonDataAllowance();
  private readonly notes = new NoteLimiter();

  constructor(
    readonly info: ConnectionInfo,
    readonly client: ClientSide,
    readonly backendFd: number,
    private readonly host: PairHost,
    /** State carried over from a previous process image. */
    restored?: ConnectionSnapshot,
    private readonly own?: OwnPipes,
  ) {
    if (restored) {
      this.bytesIn = restored.bytesIn;
      this.bytesOut = restored.bytesOut;
      if (restored.c2b?.length) this.c2b = { buf: Buffer.from(restored.c2b), off: 0 };
      if (restored.b2c?.length) this.b2c = { buf: Buffer.from(restored.b2c), off: 0 };
      this.half = halfCloseOf(restored.flags);
    }
    if (own?.held?.c2b && !this.c2b) this.c2bPipe = { pipe: own.c2b, len: own.held.c2b };
    if (own?.held?.b2c && !this.b2c) this.b2cPipe = { pipe: own.b2c, len: own.held.b2c };
    this.lastFlags = this.flagKey();
  }

  /** Whether reads splice, through the connection's own pipes or the shared pool's. */
  private get splicing(): boolean {
    return this.client.splices && (this.own !== undefined || this.host.pipes !== undefined);
  }

  private takePipe(dir: 'c2b' | 'b2c'): Pipe {
    return this.own ? this.own[dir] : this.host.pipes!.take();
  }

  /** An emptied pipe goes back to the pool (a connection's own pipe stays with it). */
  private givePipe(p: Pipe): void {
    if (!this.own) this.host.pipes!.give(p);
  }

  private get c2bHeld(): boolean {
    return this.c2b !== undefined || this.c2bPipe !== undefined;
  }

  private get b2cHeld(): boolean {
    return this.b2c !== undefined || this.b2cPipe !== undefined;
  }

  /** The state an upgrade must carry (call only while the loop is stopped). Bytes parked in pipes move into buffers. */
  snapshot(): ConnectionSnapshot {
    const out = (load: PipeLoad) => {
      const bytes = PipePool.readOut(load);
      this.givePipe(load.pipe);
      return bytes;
    };
    if (this.c2bPipe) this.c2b = { buf: out(this.c2bPipe), off: 0 };
    if (this.b2cPipe) this.b2c = { buf: out(this.b2cPipe), off: 0 };
    this.c2bPipe = this.b2cPipe = undefined;
    const rest = (p: Pending | undefined) => (p ? new Uint8Array(p.buf.subarray(p.off)) : undefined);
    return { info: this.info, bytesIn: this.bytesIn, bytesOut: this.bytesOut, c2b: rest(this.c2b), b2c: rest(this.b2c), flags: this.flags };
  }

  /** The half-close state. */
  get flags(): ConnectionSnapshot['flags'] {
    // A close_notify the socket has not taken yet, held where a carry loses it, is still owed: the next image sends it.
    const owed = this.half.down === 'notified' && this.client.pendingOutput && !this.client.carriesOutput;
    return halfCloseFlags(owed ? { up: this.half.up, down: 'eof' } : this.half);
  }

  /** Registers interest; call once after both fds are in the poller. */
  start(): void {
    this.progress();
  }

  onClient(events: number, scratch: Buffer): void {
    if (this.done) return;
    if (events & EPOLLOUT && this.client.pendingOutput) {
      const f = this.client.flush();
      if (f < 0 && f !== -EAGAIN) return this.finish(`client write failed: ${errnoName(-f)}`, 'client_error');
    }
    if (events & EPOLLOUT) this.flushB2c();
    if (!this.done && events & ~EPOLLOUT) this.readClient(scratch);
    this.progress();
  }

  onBackend(events: number, scratch: Buffer): void {
    if (this.done) return;
    if (events & EPOLLOUT) this.flushC2b();
    if (!this.done && events & ~EPOLLOUT) this.readBackend(scratch);
    this.progress();
  }

  private readClient(scratch: Buffer): void {
    const splicing = this.splicing;
    const until = this.bytesIn + TURN_BYTES;
    let reads = 0;
    while (!this.done && this.half.up === 'open' && !this.c2bHeld && !this.client.inputPaused) {
      // Every read counts, with data or without: records that carry nothing cost the same turn.
      if ((this.bytesIn >= until || reads++ >= TURN_READS) && !this.client.bufferedInput) return;
      let r: ClientRead;
      if (splicing) {
        const pipe = this.takePipe('c2b');
        const s = this.client.spliceIn!(pipe.w, PIPE_CHUNK);
        if (typeof s === 'number') {
          this.bytesIn += s;
          this.lastActivity = Date.now();
          this.c2bPipe = { pipe, len: s };
          this.flushC2b();
          continue;
        }
        this.givePipe(pipe);
        r = s === 'control' ? this.client.read(scratch) : s;
      } else {
        r = this.client.read(scratch);
      }
      switch (r.kind) {
        case 'again':
          return;
        case 'skip': {
          if (!this.nonData.take()) {
            this.client.sendAlert(ALERT.unexpected_message);
            return this.finish(
              `client sent records without data faster than allowed (${NON_DATA_BURST} at once, ${NON_DATA_PER_SECOND}/s after)`,
              'protocol_error',
            );
          }
          const line = r.note && this.notes.pass(r.note);
          if (line) this.host.log('info', this.info.id, line);
          continue;
        }
        case 'data': {
          this.bytesIn += r.n;
          this.lastActivity = Date.now();
          this.sendOrKeep(this.backendFd, scratch, r.n, 'c2b');
          continue;
        }
        case 'close_notify':
          this.host.log('debug', this.info.id, 'client sent close_notify; half-closing the backend');
          this.half.up = 'eof';
          return;
        case 'eof':
          return this.finish('client closed TCP without close_notify (truncation)', 'client_truncated');
        case 'fatal':
          if (r.alert !== undefined) this.client.sendAlert(r.alert);
          return this.finish(r.reason, r.alert !== undefined ? 'protocol_error' : r.clientAlert ? 'client_alert' : 'client_error');
      }
    }
  }

  private readBackend(scratch: Buffer): void {
    const splicing = this.splicing;
    const until = this.bytesOut + TURN_BYTES;
    while (!this.done && this.half.down === 'open' && !this.b2cHeld && this.bytesOut < until) {
      const pipe = splicing ? this.takePipe('b2c') : undefined;
      const r = pipe ? sys.splice(this.backendFd, pipe.w, PIPE_CHUNK) : sys.recv(this.backendFd, scratch, scratch.length);
      if (pipe && r <= 0) this.givePipe(pipe);
      if (r === -EAGAIN || r === -EINTR) return;
      if (r < 0) {
        this.client.sendAlert(ALERT.internal_error);
        return this.finish(`backend read failed: ${errnoName(-r)}`, 'backend_error');
      }
      if (r === 0) {
        this.host.log('debug', this.info.id, 'backend closed its side; sending close_notify to the client');
        this.half.down = 'eof';
        return;
      }
      this.bytesOut += r;
      this.lastActivity = Date.now();
      if (pipe) {
        this.b2cPipe = { pipe, len: r };
        this.flushB2c();
      } else {
        this.sendOrKeep(this.client.fd, scratch, r, 'b2c');
      }
    }
  }

  /** Writes what it can now; keeps a private copy of the rest (which pauses reading that direction). */
  private sendOrKeep(fd: number, buf: Buffer, len: number, dir: 'c2b' | 'b2c'): void {
    const w = dir === 'b2c' ? this.client.write(buf, len) : sys.send(fd, buf, len);
    if (w < 0 && w !== -EAGAIN && w !== -EINTR) {
      return this.finish(`${dir === 'b2c' ? 'client' : 'backend'} write failed: ${errnoName(-w)}`, dir === 'b2c' ? 'client_error' : 'backend_error');
    }
    const n = w < 0 ? 0 : w;
    if (n < len) {
      const rest = { buf: Buffer.from(buf.subarray(n, len)), off: 0 };
      if (dir === 'c2b') this.c2b = rest;
      else this.b2c = rest;
    }
  }

  /** Splices what a pipe holds on to `fd`; the pipe goes back to the pool once empty. */
  private flushPipe(load: PipeLoad, fd: number, dir: 'c2b' | 'b2c'): void {
    const w = sys.splice(load.pipe.r, fd, load.len);
    if (w === -EAGAIN || w === -EINTR) return;
    if (w < 0) return this.finish(`${dir === 'b2c' ? 'client' : 'backend'} write failed: ${errnoName(-w)}`, dir === 'b2c' ? 'client_error' : 'backend_error');
    load.len -= w;
    if (load.len > 0) return;
    if (dir === 'c2b') this.c2bPipe = undefined;
    else this.b2cPipe = undefined;
    this.givePipe(load.pipe);
  }

  private flushC2b(): void {
    if (this.c2bPipe) return this.flushPipe(this.c2bPipe, this.backendFd, 'c2b');
    const p = this.c2b;
    if (!p) return;
    const w = sys.send(this.backendFd, p.buf.subarray(p.off), p.buf.length - p.off);
    if (w === -EAGAIN || w === -EINTR) return;
    if (w < 0) return this.finish(`backend write failed: ${errnoName(-w)}`, 'backend_error');
    p.off += w;
    if (p.off === p.buf.length) this.c2b = undefined;
  }

  private flushB2c(): void {
    if (this.b2cPipe) return this.flushPipe(this.b2cPipe, this.client.fd, 'b2c');
    const p = this.b2c;
    if (!p) return;
    const w = this.client.write(p.buf.subarray(p.off), p.buf.length - p.off);
    if (w === -EAGAIN || w === -EINTR) return;
    if (w < 0) return this.finish(`client write failed: ${errnoName(-w)}`, 'client_error');
    p.off += w;
    if (p.off === p.buf.length) this.b2c = undefined;
  }

  /** Applies half-closes once their direction is drained, closes when both are done, and sets interest. */
  private progress(): void {
    if (this.done) return;
    if (this.half.up === 'eof' && !this.c2bHeld) {
      this.half.up = 'shut';
      sys.shutdown(this.backendFd, SHUT_WR);
    }
    if (this.half.down === 'eof' && !this.b2cHeld) {
      this.half.down = 'notified';
      this.client.closeNotify();
    }
    if (this.half.down === 'notified' && !this.client.pendingOutput) {
      this.half.down = 'shut';
      sys.shutdown(this.client.fd, SHUT_WR);
    }
    if (this.half.up === 'shut' && this.half.down === 'shut') return this.finish('both sides closed', 'completed');
    const c = (this.half.up === 'open' && !this.c2bHeld && !this.client.inputPaused ? EPOLLIN : 0) | (this.b2cHeld || this.client.pendingOutput ? EPOLLOUT : 0);
    const b = (this.half.down === 'open' && !this.b2cHeld ? EPOLLIN : 0) | (this.c2bHeld ? EPOLLOUT : 0);
    if (c !== this.cEvents) this.host.interest(this.client.fd, (this.cEvents = c));
    if (b !== this.bEvents) this.host.interest(this.backendFd, (this.bEvents = b));
    if (this.host.flagsChanged && this.flagKey() !== this.lastFlags) {
      this.lastFlags = this.flagKey();
      this.host.flagsChanged(this);
    }
  }

  private flagKey(): string {
    return `${this.half.up}/${this.half.down}`;
  }

  /** Lets go of the connection without closing anything (it moves to another loop); wipes the client's keys. */
  release(): void {
    this.done = true;
    this.dropPipes();
    this.client.wipe();
  }

  /** Closes pool pipes that still hold bytes (an empty one went back already; the host closes a connection's own pipes). */
  private dropPipes(): void {
    if (!this.own) for (const l of [this.c2bPipe, this.b2cPipe]) if (l) PipePool.close(l.pipe);
    this.c2bPipe = this.b2cPipe = undefined;
  }

  /** Closes both sides now (idle timeout, shutdown). */
  abort(reason: string, cause: 'idle_timeout' | 'shutdown'): void {
    this.finish(reason, cause);
  }

  private finish(reason: string, cause: CloseCause): void {
    if (this.done) return;
    const level = closeLevel(cause);
    this.done = true;
    this.c2b = undefined;
    this.b2c = undefined;
    this.dropPipes();
    this.client.flush();
    this.client.wipe();
    const held = this.notes.unreported;
    if (held) this.host.log('info', this.info.id, `${held} more record(s) without data went unlogged (rate limit)`);
    this.host.closed(this, reason, level, cause);
  }
}

/**
 * How loudly a close is logged: a warning only for what an operator should look at (a backend failing, a client
 * breaking the protocol). A client that resets, truncates or sends its own alert is the client's doing, logged as an
 * ordinary close (as HAProxy notes it in its access log line, not as an error): an ordinary client going away costs no warning.
 */
function closeLevel(cause: CloseCause): 'info' | 'warn' {
  return cause === 'backend_error' || cause === 'protocol_error' ? 'warn' : 'info';
}
