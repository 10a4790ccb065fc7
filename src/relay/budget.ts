// What one client can make its relay thread do: records per turn, records without data per second, log lines about them.

/**
 * Bytes one direction of a pair may move per readiness event. epoll is level-triggered, so what is left
 * is reported again on the next wait, after every other ready connection of this loop has had its turn:
 * a connection with an endless supply of bytes cannot hold the loop.
 */
export const TURN_BYTES = 256 * 1024;
/** Reads (records, for a userspace client; records or splices for a kTLS one) one turn may take, data or not. */
export const TURN_READS = 64;
/**
 * Records without data a client may send (KeyUpdate, empty records, warning alerts, renegotiation
 * attempts): a burst, refilled at a steady rate. Past it the connection ends with unexpected_message.
 * OpenSSL ends a connection after 32 empty records in a row; a real client sends a handful per hour.
 */
export const NON_DATA_BURST = 64;
export const NON_DATA_PER_SECOND = 16;
/** Log lines a connection gets for records without data: the first few, then one per window with a count. */
export const NOTES_UNLIMITED = 8;
export const NOTE_WINDOW_MS = 10_000;

/** A token bucket over records without data. */
export class NonDataAllowance {
  private tokens = NON_DATA_BURST;
  private at: number;

  constructor(now = Date.now()) {
    this.at = now;
  }

  /** Takes one record's worth; false once the client has sent more than it may. */
  take(now = Date.now()): boolean {
    this.tokens = Math.min(NON_DATA_BURST, this.tokens + ((now - this.at) / 1000) * NON_DATA_PER_SECOND);
    this.at = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

/** Rate-limits a connection's notes: the first NOTES_UNLIMITED, then one per NOTE_WINDOW_MS saying how many it stands for. */
export class NoteLimiter {
  private logged = 0;
  private last = 0;
  private held = 0;

  /** The line to log for this note now, or undefined (counted, and reported with the next line that goes out). */
  pass(note: string, now = Date.now()): string | undefined {
    if (this.logged >= NOTES_UNLIMITED && now - this.last < NOTE_WINDOW_MS) {
      this.held++;
      return undefined;
    }
    const line = this.held ? `${note} (and ${this.held} similar since the last line)` : note;
    this.logged++;
    this.last = now;
    this.held = 0;
    return line;
  }

  /** Notes held back and never reported (said once, at close). */
  get unreported(): number {
    return this.held;
  }
}
