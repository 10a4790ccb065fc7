// Session ticket keys inside a handshake worker: one key set for every SecureContext, through node's ticket key hook.
import crypto from 'node:crypto';
import type tls from 'node:tls';

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

/** OpenSSL's answers to node's ticket key hook (node/src/crypto/crypto_context.cc, TicketKeyCallback). */
const UNKNOWN = 0;
const ENCRYPTED = 1;
/** The ticket is good and a new one is issued: in TLS 1.3 a NewSessionTicket after the resumed handshake, in TLS 1.2 one in the abbreviated flight. */
const VALID_RENEW = 2;

/** node's internal hook on a SecureContext (tls.SecureContext#context), used by node's own tests since v12. */
interface TicketHook {
  enableTicketKeyCallback(): void;
  onticketkeycallback: (name: Buffer, iv: Buffer, encrypt: boolean) => unknown[];
  setSessionTimeout(seconds: number): void;
  setSessionIdContext(id: string): void;
}

/**
 * The worker's key set, shared by every SecureContext it arms. `replace` takes effect for every armed context at once
 * (the hook reads the current set on each call); the old set's bytes are zeroed.
 */
export class TicketKeyring {
  private set: TicketKeySet;
  /** Returned beside the UNKNOWN answer: node reads two 16-byte buffers whatever the answer (an absent one aborts the process). */
  private readonly zero = Buffer.from(new ArrayBuffer(PART));

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

  /**
   * Makes `context` issue and accept tickets under this keyring, with the lifetime of the set in force now and the
   * session ID context `sessionIdContext` (a session resumes only where it matches). Returns `context`.
   */
  arm(context: tls.SecureContext, sessionIdContext: string): tls.SecureContext {
    const hook = (context as unknown as { context: TicketHook }).context;
    hook.enableTicketKeyCallback();
    hook.onticketkeycallback = (name, _iv, encrypt) => this.answer(name, encrypt);
    hook.setSessionTimeout(this.set.lifetimeS);
    hook.setSessionIdContext(sessionIdContext);
    return context;
  }

  /** Buffers over the set's own ArrayBuffer: node reads them in place (no copy into V8's heap). */
  private part(i: number, at: number): Buffer {
    const k = this.set.keys;
    return Buffer.from(k.buffer, k.byteOffset + i * TICKET_KEY_BYTES + at, PART);
  }

  /** The key that encrypts now: the set's, or the next one once its `advanceAt` has passed. */
  encrypting(now = Date.now()): number {
    const s = this.set;
    return s.advanceAt !== undefined && now >= s.advanceAt ? Math.min(s.encrypt + 1, keyCount(s.keys) - 1) : s.encrypt;
  }

  private answer(name: Buffer, encrypt: boolean): unknown[] {
    if (encrypt) {
      const i = this.encrypting();
      return [ENCRYPTED, this.part(i, 2 * PART), this.part(i, PART), this.part(i, 0), crypto.randomBytes(PART)];
    }
    const n = keyCount(this.set.keys);
    for (let i = 0; i < n; i++) {
      if (Buffer.compare(name, keyName(this.set.keys, i)) === 0) return [VALID_RENEW, this.part(i, 2 * PART), this.part(i, PART)];
    }
    this.onUnknown?.();
    return [UNKNOWN, this.zero, this.zero];
  }

  wipe(): void {
    this.set.keys.fill(0);
  }
}
