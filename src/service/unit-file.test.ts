// The shipped systemd unit (contrib/ironsocket.service) turns off core dumps: the proxy holds private and session keys.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { ROOT } from '../testkit/proxy-process.js';

/** The active (uncommented) settings of one section of a unit file, as [key, value] pairs. */
function settings(unit: string, section: string): [string, string][] {
  const out: [string, string][] = [];
  let current = '';
  for (const raw of unit.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('[')) current = line;
    else if (current === `[${section}]` && line && !line.startsWith('#') && line.includes('=')) {
      const i = line.indexOf('=');
      out.push([line.slice(0, i), line.slice(i + 1)]);
    }
  }
  return out;
}

test('the service unit sets LimitCORE=0 in [Service]', () => {
  const unit = fs.readFileSync(path.join(ROOT, 'contrib/ironsocket.service'), 'utf8');
  const limits = settings(unit, 'Service').filter(([k]) => k === 'LimitCORE');
  assert.deepEqual(limits, [['LimitCORE', '0']]);
});
