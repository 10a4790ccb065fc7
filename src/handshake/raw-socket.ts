// A raw non-blocking TCP fd read exactly one TLS record at a time, so the kernel keeps every byte we did not ask for.
import { EAGAIN, EINTR, errnoName, sys } from '../kernel/libc.js';
import { EPOLLIN, EPOLLOUT, type Poller } from '../kernel/poller.js';

export const RECORD_HEADER = 5;
export const MAX_RECORD_BODY = (1 << 14) + 256;

/** Why the raw socket stopped: the peer closed, an I/O error, or a malformed record header. */
export class RawSocketError extends Error {
  constructor(
    message: string,
    readonly kind: 'eof' | 'io' | 'malformed',
    /** The TLS alert to send for a malformed header. */
    readonly alert?: number,
  ) {
    super(message);
  }
}

/** Checks a record header; returns an error message and alert, or undefined when plausible. */
export function checkRecordHeader(h: Buffer): { message: string; alert: number } | undefined {
  const type = h[0]!;
  if (type < 20 || type > 24) {
    const printable = h.every((c) => c >= 0x20 && c < 0x7f);
    return {
      message: printable
        ? `client sent plaintext (${JSON.stringify(h.toString('latin1'))}…) instead of a TLS record`
        : `record type ${type} is not a TLS content type`,
      alert: 10, // unexpected_message
    };
  }
  if (h[1] !== 3) return { message: `record version ${h[1]}.${h[2]} is not TLS`, alert: 70 /* protocol_version */ };
  const len = h.readUInt16BE(3);
  if (len > MAX_RECORD_BODY) return { message: `record length ${len} exceeds 2^14+256`, alert: 22 /* record_overflow */ };
  return undefined;
}

export class RawRecordSocket {
  private readonly header = Buffer.alloc(RECORD_HEADER);
  private body: Buffer | undefined;
  private got = 0;
  private wanting = false;
  private onRecord: ((record: Buffer) => void) | undefined;
  private readonly outQueue: Buffer[] = [];
  private readonly outCallbacks: Array<() => void> = [];
  private events = 0;
  private failed: RawSocketError | undefined;
  private registered = true;

  constructor(
    readonly fd: number,
    private readonly poller: Poller,
    private readonly onError: (e: RawSocketError) => void,
  ) {
    poller.add(fd, 0, (ev) => this.ready(ev));
  }

  /**
   * Asks for exactly one more record; `cb` gets its full bytes (header + body). The socket is read first (on the next
   * tick, off the caller's stack): the record is usually there already (a ClientHello behind the accept, a Finished
   * behind the ChangeCipherSpec), and each wait for readiness costs a trip through the poller's thread.
   */
  readRecord(cb: (record: Buffer) => void): void {
    this.onRecord = cb;
    this.wanting = true;
    // pull() registers for readiness itself if the record is not all there.
    process.nextTick(() => {
      if (this.wanting && this.registered) this.pull();
    });
  }

  /** Queues bytes to send; `cb` runs once they are all in the kernel. */
  write(data: Buffer, cb?: () => void): void {
    // After a read-side failure (EOF, malformed input) we may still owe the peer an alert; not after an I/O error.
    if (this.failed?.kind === 'io') return;
    this.outQueue.push(data);
    if (cb) this.outCallbacks.push(cb);
    this.flush();
  }

  get pendingOutput(): number {
    return this.outQueue.reduce((n, b) => n + b.length, 0);
  }

  /** Stops all readiness callbacks and forgets the fd (which stays open). */
  detach(): void {
    if (!this.registered) return;
    this.registered = false;
    this.poller.remove(this.fd);
  }

  private update(): void {
    if (!this.registered) return;
    const want = (this.wanting ? EPOLLIN : 0) | (this.outQueue.length > 0 ? EPOLLOUT : 0);
    if (want !== this.events) {
      this.events = want;
      this.poller.modify(this.fd, want);
    }
  }

  private ready(ev: number): void {
    if (ev & EPOLLOUT || this.outQueue.length > 0) this.flush();
    if (this.wanting && ev & ~EPOLLOUT) this.pull();
  }

  private fail(e: RawSocketError): void {
    if (this.failed) return;
    this.failed = e;
    this.wanting = false;
    this.outQueue.length = 0;
    this.outCallbacks.length = 0;
    this.update();
    this.onError(e);
  }

  private pull(): void {
    while (this.wanting) {
      const target = this.body ?? this.header;
      const r = sys.recv(this.fd, this.body ? this.body.subarray(this.got) : this.header.subarray(this.got), target.length - this.got);
      if (r === -EAGAIN || r === -EINTR) return this.update();
      if (r < 0) return this.fail(new RawSocketError(`read from client: ${errnoName(-r)}`, 'io'));
      if (r === 0) {
        const mid = this.got > 0 || this.body !== undefined;
        return this.fail(new RawSocketError(mid ? 'client closed the connection in the middle of a record' : 'client closed the connection', 'eof'));
      }
      this.got += r;
      if (this.got < target.length) continue;
      if (!this.body) {
        const bad = checkRecordHeader(this.header);
        if (bad) return this.fail(new RawSocketError(bad.message, 'malformed', bad.alert));
        this.body = Buffer.allocUnsafe(RECORD_HEADER + this.header.readUInt16BE(3));
        this.header.copy(this.body, 0);
        this.got = RECORD_HEADER;
        if (this.got < this.body.length) continue;
      }
      const record = this.body;
      this.body = undefined;
      this.got = 0;
      this.wanting = false;
      this.update();
      const cb = this.onRecord!;
      this.onRecord = undefined;
      cb(record);
    }
  }

  private flush(): void {
    while (this.outQueue.length > 0) {
      const head = this.outQueue[0]!;
      const r = sys.send(this.fd, head, head.length);
      if (r === -EAGAIN || r === -EINTR) break;
      if (r < 0) return this.fail(new RawSocketError(`write to client: ${errnoName(-r)}`, 'io'));
      if (r < head.length) {
        this.outQueue[0] = head.subarray(r);
        continue;
      }
      this.outQueue.shift();
    }
    if (this.outQueue.length === 0 && this.outCallbacks.length > 0) {
      const cbs = this.outCallbacks.splice(0);
      for (const cb of cbs) cb();
    }
    this.update();
  }
}
