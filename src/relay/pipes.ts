// A pool of kernel pipes for splice: a connection holds one only while bytes are in it, so idle connections hold none (unless it has its own, for the fd store).
import { errnoName, sys } from '../kernel/libc.js';

export interface Pipe {
  readonly r: number;
  readonly w: number;
}

/** Bytes parked in a pipe on their way out (the destination was full). */
export interface PipeLoad {
  pipe: Pipe;
  len: number;
}

export class PipePool {
  private readonly idle: Pipe[] = [];

  /** `keep`: how many empty pipes stay open for reuse. */
  constructor(private readonly keep = 32) {}

  /** An empty pipe. */
  take(): Pipe {
    const p = this.idle.pop();
    if (p) return p;
    const [r, w] = sys.pipe();
    return { r, w };
  }

  /** Returns a pipe known to be empty. */
  give(p: Pipe): void {
    if (this.idle.length < this.keep) this.idle.push(p);
    else PipePool.close(p);
  }

  /** Reads out what a pipe holds (a connection leaving this process) and returns the pipe. */
  drain(load: PipeLoad): Buffer {
    const out = PipePool.readOut(load);
    this.give(load.pipe);
    return out;
  }

  /** Reads out what a pipe holds, leaving the pipe empty (and with its owner). */
  static readOut(load: PipeLoad): Buffer {
    const out = Buffer.allocUnsafe(load.len);
    let got = 0;
    while (got < load.len) {
      const r = sys.read(load.pipe.r, out.subarray(got), load.len - got);
      if (r <= 0) throw new Error(`draining a relay pipe: ${r < 0 ? errnoName(-r) : 'empty'} after ${got} of ${load.len} bytes`);
      got += r;
    }
    return out;
  }

  /** Puts bytes into an empty pipe; returns false (the pipe emptied again) when they do not all fit. */
  static fill(p: Pipe, bytes: Uint8Array): boolean {
    const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const w = sys.write(p.w, b, b.length);
    if (w === b.length) return true;
    if (w > 0) PipePool.readOut({ pipe: p, len: w });
    return false;
  }

  static close(p: Pipe): void {
    sys.close(p.r);
    sys.close(p.w);
  }

  close(): void {
    for (const p of this.idle.splice(0)) PipePool.close(p);
  }
}
