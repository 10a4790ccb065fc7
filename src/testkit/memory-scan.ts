// Test support: searches another process's writable memory (/proc/<pid>/mem, as root) for known secret bytes.
import fs from 'node:fs';

export interface Needle {
  name: string;
  bytes: Buffer;
}

export interface Found {
  name: string;
  address: string;
  /** The mapping it was found in, as /proc/<pid>/maps names it ("[heap]", a file, or "" for anonymous). */
  mapping: string;
}

interface Range {
  start: number;
  end: number;
  name: string;
}

/** Readable and writable mappings: a secret was written where it lies (read-only ones are code and constants). */
function writableRanges(pid: number): Range[] {
  const out: Range[] = [];
  for (const line of fs.readFileSync(`/proc/${pid}/maps`, 'latin1').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (!m || m[3]![0] !== 'r' || m[3]![1] !== 'w') continue;
    const name = m[4]!;
    if (name === '[vvar]' || name === '[vsyscall]' || name.startsWith('[vvar')) continue;
    out.push({ start: parseInt(m[1]!, 16), end: parseInt(m[2]!, 16), name });
  }
  return out;
}

const CHUNK = 1 << 20;

/**
 * Every place in `pid`'s writable memory where one of `needles` occurs. Reads each mapping in 1 MiB chunks
 * (overlapping by the longest needle); a chunk the kernel will not read (EIO, a short read) is read page by
 * page, and pages that still cannot be read are skipped.
 */
export function scanMemory(pid: number, needles: Needle[]): Found[] {
  const longest = Math.max(...needles.map((n) => n.bytes.length));
  const found: Found[] = [];
  const fd = fs.openSync(`/proc/${pid}/mem`, 'r');
  const buf = Buffer.alloc(CHUNK + longest);
  const seen = new Set<string>();
  const search = (data: Buffer, base: number, name: string) => {
    for (const n of needles) {
      for (let at = data.indexOf(n.bytes); at >= 0; at = data.indexOf(n.bytes, at + 1)) {
        const address = '0x' + (base + at).toString(16);
        if (seen.has(n.name + address)) continue;
        seen.add(n.name + address);
        found.push({ name: n.name, address, mapping: name });
      }
    }
  };
  const readAt = (target: Buffer, len: number, pos: number): number => {
    try {
      return fs.readSync(fd, target, 0, len, pos);
    } catch {
      return 0;
    }
  };
  try {
    for (const r of writableRanges(pid)) {
      for (let pos = r.start; pos < r.end; pos += CHUNK) {
        const len = Math.min(CHUNK + longest - 1, r.end - pos);
        const got = readAt(buf, len, pos);
        if (got === len) {
          search(buf.subarray(0, got), pos, r.name);
          continue;
        }
        // Part of this chunk cannot be read: go page by page (a needle across an unreadable page cannot be seen anyway).
        const page = Buffer.alloc(4096 + longest);
        for (let p = pos; p < pos + len; p += 4096) {
          const want = Math.min(4096 + longest - 1, pos + len - p);
          const n = readAt(page, want, p);
          if (n > 0) search(page.subarray(0, n), p, r.name);
        }
      }
    }
  } finally {
    fs.closeSync(fd);
    buf.fill(0);
  }
  return found;
}

/** Scans until none of `needles` is found or `timeoutMs` has passed; returns the last scan's findings. */
export async function scanUntilGone(pid: number, needles: Needle[], timeoutMs: number): Promise<Found[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = scanMemory(pid, needles);
    if (found.length === 0 || Date.now() >= deadline) return found;
    await new Promise((r) => setTimeout(r, 500));
  }
}
