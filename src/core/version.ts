// The version of the code this process runs, read once from its package.json (after an upgrade: the new image's).
import { readFileSync } from 'node:fs';

let cached: string | undefined;

/** package.json's `version` beside the built code, or "unknown" when it cannot be read. */
export function packageVersion(): string {
  if (cached !== undefined) return cached;
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    cached = typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    cached = 'unknown';
  }
  return cached;
}
