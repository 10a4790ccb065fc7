// Build step after tsc: writes each scenarios file's native-lane `NAME.test.js` and kTLS-lane `NAME.ktls-test.js` into dist/ from the list in src/testkit/lanes.ts.
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DIST = path.join(ROOT, 'dist');

/** Every `*.scenarios.js` under dir, as `folder/name` (the list's `name`). */
export function scenarioNames(dir) {
  const walk = (d) =>
    readdirSync(d, { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? walk(path.join(d, e.name)) : e.name.endsWith('.scenarios.js') ? [path.relative(dir, path.join(d, e.name))] : [],
    );
  return walk(dir)
    .map((f) => f.slice(0, -'.scenarios.js'.length).split(path.sep).join('/'))
    .sort();
}

/** Writes the lane files; throws when the list and the compiled scenarios disagree, or a lane file would be overwritten. */
export async function writeLaneTests(dist = DIST) {
  const { LANES, laneFileText } = await import(pathToFileURL(path.join(dist, 'testkit/lanes.js')).href);
  const listed = LANES.map((e) => e.name).sort();
  const present = scenarioNames(dist);
  const unlisted = present.filter((n) => !listed.includes(n));
  const missing = listed.filter((n) => !present.includes(n));
  if (unlisted.length || missing.length || new Set(listed).size !== listed.length) {
    throw new Error(
      `src/testkit/lanes.ts and the *.scenarios.ts files disagree: not listed [${unlisted.join(', ')}], listed without a file [${missing.join(', ')}]` +
        (new Set(listed).size !== listed.length ? ', a name listed twice' : ''),
    );
  }
  const written = [];
  for (const entry of LANES) {
    for (const [mode, suffix] of [
      ['user', '.test.js'],
      ['kernel', '.ktls-test.js'],
    ]) {
      const file = path.join(dist, entry.name + suffix);
      if (existsSync(file)) throw new Error(`${path.relative(ROOT, file)} exists: a lane file is generated, not written in src/`);
      writeFileSync(file, laneFileText(entry, mode));
      written.push(file);
    }
  }
  return written;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const written = await writeLaneTests();
  console.log(`lane tests: ${written.length} files written from src/testkit/lanes.ts`);
}
