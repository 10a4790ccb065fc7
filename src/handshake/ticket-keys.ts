// Session ticket keys inside a handshake worker: one key set for every server context, read by OpenSSL's ticket key callback.

/** One key as HAProxy's tls-ticket-keys file holds it: name[16] | aes_key[16] | hmac_key[16] (AES-128-CBC, HMAC-SHA256). */
export const TICKET_KEY_BYTES = 48;
const PART = 16;

/**
 * The keys every handshake of the process uses, oldest first, packed TICKET_KEY_BYTES each in a Uint8Array that owns
 * its whole ArrayBuffer (it moves between threads as a transfer). New tickets are encrypted with `keys[encrypt]`; a
 * ticket under any of the keys is accepted.
 */
export interface TicketKeySet {
  keys: Uint8Array;
  encrypt: number;
  /** Seconds a session (ticket) stays valid: OpenSSL's session timeout, the lifetime hint clients see. */
  lifetimeS: number;
  /**
   * For a set that will hear of no rotation (the upgrade bridge's): from this time (ms since the epoch) the next key
   * encrypts, as it does in the image once its rotation is due, so no ticket is issued under a key about to retire.
   */
  advanceAt?: number;
}

/** One key's three parts (views of the set's bytes). */
export interface TicketKey {
  name: Buffer;
  aes: Buffer;
  hmac: Buffer;
}

/** How many keys a set holds. */
export const keyCount = (keys: Uint8Array): number => keys.length / TICKET_KEY_BYTES;

/** The 16-byte name of key `i` (a view: names are public, every ticket carries its key's name in the clear). */
export const keyName = (keys: Uint8Array, i: number): Uint8Array => keys.subarray(i * TICKET_KEY_BYTES, i * TICKET_KEY_BYTES + PART);

/** Which key `set` encrypts with by default: the penultimate (HAProxy's rule), so that the newest is accepted everywhere first. */
export const encryptIndex = (n: number): number => Math.max(0, n - 2);

/** Refuses a set that cannot be used (wrong size, encrypt index outside it, no lifetime). */
export function checkKeySet(set: TicketKeySet): void {
  const n = set.keys.length / TICKET_KEY_BYTES;
  if (!Number.isInteger(n) || n < 1) throw new Error(`session ticket keys: ${set.keys.length} bytes is not a whole number of ${TICKET_KEY_BYTES}-byte keys`);
  if (!Number.isInteger(set.encrypt) || set.encrypt < 0 || set.encrypt >= n) throw new Error(`session ticket keys: no key ${set.encrypt} among ${n}`);
  if (!(set.lifetimeS >= 1)) throw new Error(`session ticket keys: lifetime ${set.lifetimeS} s`);
}

/**
 * The worker's key set, shared by every server (libssl.ts) given it. `replace` takes effect for all of them at once
 * (OpenSSL's ticket callback reads the current set on each call); the old set's bytes are zeroed.
 */
export class TicketKeyring {
  private set: TicketKeySet;

  /** `onUnknown` hears each ticket whose key is not in the set (the client then gets a full handshake). */
  constructor(
    set: TicketKeySet,
    private readonly onUnknown?: () => void,
  ) {
    checkKeySet(set);
    this.set = set;
  }

  get lifetimeS(): number {
    return this.set.lifetimeS;
  }

  /** Takes `set` (its buffer becomes the keyring's) and zeroes the one it replaces. */
  replace(set: TicketKeySet): void {
    checkKeySet(set);
    const old = this.set;
    this.set = set;
    if (old.keys !== set.keys) old.keys.fill(0);
  }

  private key(i: number): TicketKey {
    return { name: this.part(i, 0), aes: this.part(i, PART), hmac: this.part(i, 2 * PART) };
  }

  /** Buffers over the set's own ArrayBuffer: OpenSSL reads them in place (no copy). */
  private part(i: number, at: number): Buffer {
    const k = this.set.keys;
    return Buffer.from(k.buffer, k.byteOffset + i * TICKET_KEY_BYTES + at, PART);
  }

  /** The key that encrypts now: the set's, or the next one once its `advanceAt` has passed. */
  encrypting(now = Date.now()): number {
    const s = this.set;
    return s.advanceAt !== undefined && now >= s.advanceAt ? Math.min(s.encrypt + 1, keyCount(s.keys) - 1) : s.encrypt;
  }

  /** The key new tickets are encrypted with: views of the set's bytes, valid until the next `replace`. */
  forEncryption(): TicketKey {
    return this.key(this.encrypting());
  }

  /** The key named `name` (a ticket's first 16 bytes), or undefined (counted) when the set has none by that name. */
  forDecryption(name: Uint8Array): TicketKey | undefined {
    const n = keyCount(this.set.keys);
    for (let i = 0; i < n; i++) {
      if (Buffer.compare(name, keyName(this.set.keys, i)) === 0) return this.key(i);
    }
    this.onUnknown?.();
    return undefined;
  }

  wipe(): void {
    this.set.keys.fill(0);
  }
}
