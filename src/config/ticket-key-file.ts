// Reads session_tickets.key_file, HAProxy's tls-ticket-keys format, straight from bytes into secret buffers (never a string).
import fs from 'node:fs';
import { secretBuffer } from '../record/keys.js';
import { keyPermissionWarning } from './key-permissions.js';

/** HAProxy's 48-byte keys: name[16] | aes_key[16] | hmac_key[16] (AES-128-CBC, HMAC-SHA256): handshake/ticket-keys.ts's layout. */
const TICKET_KEY_BYTES = 48;
/** HAProxy keeps the last 3 keys of the file (TLS_TICKETS_NO) and refuses a file with fewer. */
export const KEYS_USED = 3;
/** HAProxy's 80-byte keys: name[16] | aes_key[32] | hmac_key[32] (AES-256-CBC). */
const AES256_KEY_BYTES = 80;
/** A file far larger than any list of keys is not one (and is not read whole into memory). */
const MAX_FILE_BYTES = 1 << 20;

export class TicketKeyFileError extends Error {}

/** The last KEYS_USED keys of a file, oldest first, packed (HAProxy encrypts with the penultimate). The caller zeroes `keys`. */
export interface TicketKeyFile {
  keys: Buffer;
}

const B64 = new Int16Array(256).fill(-1);
for (const [i, c] of [...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'].entries()) B64[c.charCodeAt(0)] = i;
const EQ = 0x3d;

/** Strict base64 (HAProxy's base64dec: a multiple of 4 characters, padding only at the end), decoded into a secret buffer; undefined when malformed. */
function decodeBase64(src: Uint8Array): Buffer | undefined {
  if (src.length === 0 || src.length % 4 !== 0) return undefined;
  const pad = src[src.length - 1] === EQ ? (src[src.length - 2] === EQ ? 2 : 1) : 0;
  const out = secretBuffer((src.length / 4) * 3 - pad);
  let o = 0;
  for (let i = 0; i < src.length; i += 4) {
    const last = i + 4 === src.length;
    let v = 0;
    for (let j = 0; j < 4; j++) {
      const c = src[i + j]!;
      const d = c === EQ && last && j >= 4 - pad ? 0 : B64[c]!;
      if (d < 0) {
        out.fill(0);
        return undefined;
      }
      v = (v << 6) | d;
    }
    const bytes = [(v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff];
    for (let j = 0; j < 3 && o < out.length; j++) out[o++] = bytes[j]!;
    v = 0;
  }
  return out;
}

/**
 * Parses the file's bytes: one base64 key per line, 48 bytes each, as HAProxy's `tls-ticket-keys` (so one file serves
 * both). Refuses what HAProxy refuses (a line that is not base64, a key of another size, fewer than 3 keys) and 80-byte
 * AES-256 keys, which node's ticket hook cannot use. Zeroes `raw` whatever happens. `file` names it in messages.
 */
export function parseTicketKeys(raw: Uint8Array, file: string): TicketKeyFile {
  const keys: Buffer[] = [];
  const fail = (why: string): never => {
    for (const k of keys) k.fill(0);
    throw new TicketKeyFileError(`session_tickets.key_file ${file}: ${why}`);
  };
  try {
    let start = 0;
    let line = 0;
    while (start < raw.length) {
      line++;
      let end = raw.indexOf(0x0a, start);
      if (end < 0) end = raw.length;
      let stop = end;
      if (stop > start && raw[stop - 1] === 0x0d) stop--;
      const key = decodeBase64(raw.subarray(start, stop));
      start = end + 1;
      if (!key) fail(`line ${line}: not a base64 key (one per line, as \`openssl rand 48 | base64\` prints)`);
      if (key!.length === AES256_KEY_BYTES) {
        key!.fill(0);
        fail(
          `line ${line}: an 80-byte (AES-256) key; only 48-byte keys (AES-128) can be used, because node's session ticket hook encrypts tickets with AES-128-CBC (generate them with \`openssl rand 48 | base64\`)`,
        );
      }
      if (key!.length !== TICKET_KEY_BYTES) {
        const n = key!.length;
        key!.fill(0);
        fail(`line ${line}: a key of ${n} bytes; each must be ${TICKET_KEY_BYTES} bytes (name 16, AES key 16, HMAC key 16)`);
      }
      keys.push(key!);
    }
    if (keys.length < KEYS_USED)
      fail(`${keys.length} key(s); at least ${KEYS_USED} are needed, as for HAProxy (the last 3 are used: the penultimate encrypts, all 3 decrypt)`);
    const used = keys.slice(-KEYS_USED);
    const packed = secretBuffer(used.length * TICKET_KEY_BYTES);
    used.forEach((k, i) => k.copy(packed, i * TICKET_KEY_BYTES));
    for (const k of keys) k.fill(0);
    return { keys: packed };
  } finally {
    raw.fill(0);
  }
}

/** Reads `file` into a secret buffer through one descriptor (no symlink swapped in between the size and the read). */
function readSecretFile(file: string): Buffer {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === 'ENOENT' ? 'no such file' : err.code === 'EACCES' ? 'permission denied' : err.message;
    throw new TicketKeyFileError(`session_tickets.key_file ${file}: ${why}`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new TicketKeyFileError(`session_tickets.key_file ${file}: not a regular file`);
    if (st.size > MAX_FILE_BYTES) throw new TicketKeyFileError(`session_tickets.key_file ${file}: ${st.size} bytes is far too large for a list of keys`);
    const buf = secretBuffer(st.size);
    let o = 0;
    while (o < buf.length) {
      const n = fs.readSync(fd, buf, o, buf.length - o, o);
      if (n === 0) break;
      o += n;
    }
    return o === buf.length ? buf : secretOwnedSlice(buf, o);
  } finally {
    fs.closeSync(fd);
  }
}

/** The first `n` bytes in a buffer of their own; zeroes `buf`. */
function secretOwnedSlice(buf: Buffer, n: number): Buffer {
  const out = secretBuffer(n);
  buf.copy(out, 0, 0, n);
  buf.fill(0);
  return out;
}

/**
 * Reads and parses session_tickets.key_file; throws TicketKeyFileError saying what is wrong. `warning` is set when
 * its group or others can read it (as for private keys: said, not refused).
 */
export async function readTicketKeyFile(file: string): Promise<TicketKeyFile & { warning?: string }> {
  const parsed = parseTicketKeys(readSecretFile(file), file);
  const loose = await keyPermissionWarning(file, 'session ticket key file');
  return loose ? { ...parsed, warning: loose } : parsed;
}

/** For `ironsocket check`: the problems with the file (empty when usable) and a permission warning; the keys are zeroed at once. */
export async function checkTicketKeyFile(file: string): Promise<{ problems: string[]; warning?: string }> {
  try {
    const r = await readTicketKeyFile(file);
    r.keys.fill(0);
    return { problems: [], ...(r.warning ? { warning: r.warning } : {}) };
  } catch (e) {
    if (e instanceof TicketKeyFileError) return { problems: [e.message] };
    throw e;
  }
}
