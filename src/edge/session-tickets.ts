// The process's one set of session ticket keys (main thread): generated and rotated, or read from a key file; carried across upgrades.
import crypto from 'node:crypto';
import { readTicketKeyFile } from '../config/ticket-key-file.js';
import { secretBuffer } from '../record/keys.js';
import { TICKET_KEY_BYTES, encryptIndex, keyCount, keyName, type TicketKeySet } from '../handshake/ticket-keys.js';
import type { SessionTicketConfig, TicketStatus } from '../core/types.js';

/** Generated keys kept at most: previous, current, next (the penultimate, current, encrypts; HAProxy's rule). */
const RING = 3;

/** The keys as an upgrade carries them in the hand-off state (bytes as blobs, never a string). */
export interface CarriedTickets {
  keys: Uint8Array;
  encrypt: number;
  /** Wall-clock ms when the current key became current (generated keys: the schedule continues from there). */
  rotatedAt: number;
  source: TicketSource;
}

export type TicketSource = TicketStatus['source'];

/** A key-file read done ahead of a reload: applied by `commit`, or zeroed by `discard` when the reload is refused. */
export interface PreparedTickets {
  settings: SessionTicketConfig;
  file?: Buffer;
  warning?: string;
}

/** Reads what `settings` needs (the key file) without changing anything; throws TicketKeyFileError when it is unusable. */
export async function prepareTickets(settings: SessionTicketConfig): Promise<PreparedTickets> {
  if (settings.keyFile === undefined) return { settings };
  const r = await readTicketKeyFile(settings.keyFile);
  return { settings, file: r.keys, ...(r.warning ? { warning: r.warning } : {}) };
}

export function discardPrepared(p: PreparedTickets): void {
  p.file?.fill(0);
}

const lifetimeS = (s: SessionTicketConfig) => Math.max(1, Math.floor(s.lifetimeMs / 1000));

/**
 * Holds the keys and their schedule. `onChange` hears every new set (rotation, reload): the handshake workers then get
 * copies. Generated keys rotate every `rotateEveryMs`; a key file's keys never rotate here.
 */
export class SessionTickets {
  private keys: Buffer;
  private encrypt: number;
  private source: TicketSource;
  private settings: SessionTicketConfig;
  private rotatedAt: number;
  private timer: NodeJS.Timeout | undefined;
  private readonly listeners: Array<(why: string) => void> = [];

  /**
   * From `prepared` (start: its key file), else the keys an upgrade carried, else two fresh ones (current and next).
   * Takes ownership of `carried.keys` and of the prepared file's buffer.
   */
  constructor(
    prepared: PreparedTickets,
    carried?: CarriedTickets,
    private readonly now: () => number = Date.now,
  ) {
    this.settings = prepared.settings;
    if (prepared.file) {
      this.keys = prepared.file;
      this.source = 'key_file';
      this.rotatedAt = now();
      carried?.keys.fill(0);
    } else if (carried && carried.keys.length % TICKET_KEY_BYTES === 0 && carried.keys.length > 0) {
      this.keys = own(carried.keys);
      carried.keys.fill(0);
      // A key file's keys go on as generated ones (outstanding tickets stay good) and rotate from now.
      this.rotatedAt = carried.source === 'generated' ? Math.min(carried.rotatedAt, now()) : now();
      this.source = 'generated';
    } else {
      carried?.keys.fill(0);
      this.keys = fresh(2);
      this.source = 'generated';
      this.rotatedAt = now();
    }
    this.encrypt = encryptIndex(keyCount(this.keys));
    this.schedule();
  }

  onChange(f: (why: string) => void): void {
    this.listeners.push(f);
  }

  /** A copy of the current set for one worker, in an ArrayBuffer of its own (to transfer: it becomes theirs). */
  current(): TicketKeySet {
    const keys = new Uint8Array(new ArrayBuffer(this.keys.length));
    keys.set(this.keys);
    return { keys, encrypt: this.encrypt, lifetimeS: lifetimeS(this.settings) };
  }

  /**
   * current() for a process that hears of no rotation (the upgrade bridge, for the seconds of an upgrade): generated
   * keys move it to the next key when this set's rotation is due, so its tickets live as long as the image's.
   */
  detached(): TicketKeySet {
    const set = this.current();
    return this.source === 'generated' ? { ...set, advanceAt: this.rotatedAt + this.settings.rotateEveryMs } : set;
  }

  /** A copy for the hand-off state (the caller zeroes it once encoded). */
  carry(): CarriedTickets {
    return { keys: own(this.keys), encrypt: this.encrypt, rotatedAt: this.rotatedAt, source: this.source };
  }

  status(): TicketStatus {
    const n = keyCount(this.keys);
    return {
      source: this.source,
      ...(this.source === 'key_file' && this.settings.keyFile ? { keyFile: this.settings.keyFile } : {}),
      keys: n,
      names: Array.from({ length: n }, (_, i) => Buffer.from(keyName(this.keys, i).subarray(0, 4)).toString('hex')),
      encrypt: this.encrypt,
      lifetimeS: lifetimeS(this.settings),
      ...(this.source === 'generated'
        ? { rotateEveryS: Math.floor(this.settings.rotateEveryMs / 1000), rotatedAt: new Date(this.rotatedAt).toISOString() }
        : {}),
    };
  }

  /**
   * Applies a reload's settings (from `prepareTickets`, which read the key file). A key file replaces the keys with its
   * own; without one, generated keys stay (a key file's keys stay too, and rotate from now), with the new schedule.
   */
  commit(p: PreparedTickets): void {
    this.settings = p.settings;
    if (p.file) {
      this.replace(p.file, 'key_file');
      this.rotatedAt = this.now();
    } else if (this.source === 'key_file') {
      this.source = 'generated';
      this.rotatedAt = this.now();
    }
    this.schedule();
    this.emit(p.file ? `read ${p.settings.keyFile}` : 'reloaded');
  }

  /** Makes the next key current now: the previous stays accepted, the one before it is dropped. */
  rotate(): void {
    const n = keyCount(this.keys);
    const kept = Math.min(n, RING - 1);
    const next = secretBuffer((kept + 1) * TICKET_KEY_BYTES);
    this.keys.copy(next, 0, (n - kept) * TICKET_KEY_BYTES);
    crypto.randomFillSync(next, kept * TICKET_KEY_BYTES, TICKET_KEY_BYTES);
    this.replace(next, 'generated');
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.keys.fill(0);
  }

  private replace(keys: Buffer, source: TicketSource): void {
    this.keys.fill(0);
    this.keys = keys;
    this.source = source;
    this.encrypt = encryptIndex(keyCount(keys));
  }

  private emit(why: string): void {
    for (const f of this.listeners) f(why);
  }

  private schedule(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.source !== 'generated') return;
    const every = this.settings.rotateEveryMs;
    this.timer = setTimeout(() => this.due(), Math.max(0, this.rotatedAt + every - this.now()));
    this.timer.unref();
  }

  /** Rotates once per period gone by (at most a ring's worth: after a long stop every key is new), then waits for the next. */
  private due(): void {
    const every = this.settings.rotateEveryMs;
    let turns = 0;
    while (this.now() >= this.rotatedAt + every && turns < RING) {
      this.rotate();
      this.rotatedAt += every;
      turns++;
    }
    if (this.now() >= this.rotatedAt + every) this.rotatedAt = this.now();
    this.schedule();
    if (turns > 0) this.emit(`rotated (${turns})`);
  }
}

/** `n` random keys in a secret buffer. */
function fresh(n: number): Buffer {
  const b = secretBuffer(n * TICKET_KEY_BYTES);
  crypto.randomFillSync(b);
  return b;
}

/** A copy in an ArrayBuffer of its own; zeroes nothing. */
function own(src: Uint8Array): Buffer {
  const b = secretBuffer(src.length);
  b.set(src);
  return b;
}
