// Reads the kernel's per-namespace TLS counters (/proc/net/tls_stat) so /metrics can show what kTLS is doing.
import { readFile } from 'node:fs/promises';

export const TLS_STAT_PATH = '/proc/net/tls_stat';

/**
 * Parses the file's text: one `Name<padding>\t<count>` line per counter (the kernel prints "%-32s\t%lu\n",
 * e.g. `TlsCurrTxSw    0`). Blank lines are skipped; any other line, or a name seen twice, throws with its line number.
 */
export function parseTlsStat(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    const m = /^\s*([A-Za-z][A-Za-z0-9]*)\s+(\d+)\s*$/.exec(line);
    if (!m) throw new Error(`tls_stat line ${i + 1} is not "<Name> <count>": ${JSON.stringify(line)}`);
    if (m[1] in out) throw new Error(`tls_stat line ${i + 1} repeats ${m[1]}`);
    out[m[1]] = Number(m[2]);
  });
  return out;
}

/** The parsed file, or undefined when it does not exist (the tls module is not loaded, or no procfs). */
export async function readTlsStat(path = TLS_STAT_PATH): Promise<Record<string, number> | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw e;
  }
  return parseTlsStat(text);
}
