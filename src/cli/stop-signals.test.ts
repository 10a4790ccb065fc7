// SIGTERM/SIGINT handling for `run`: the first starts a stop, a second or the deadline ends the process at once.
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { watchStopSignals, type StopSignals } from './stop-signals.js';

let watching: StopSignals | undefined;
afterEach(() => watching?.dispose());

/** Watches with a fake exit that records its codes (the real one is libc's _exit). */
function watch(deadlineMs: number) {
  const said: string[] = [];
  const exits: number[] = [];
  watching = watchStopSignals({ say: (line) => said.push(line), exitNow: ((code: number) => void exits.push(code)) as (code: number) => never, deadlineMs });
  return { stop: watching, said, exits };
}

describe('watchStopSignals', () => {
  it('hears a signal that comes before anyone awaits it, as during start-up', async () => {
    const { stop, exits } = watch(10_000);
    process.emit('SIGTERM', 'SIGTERM');
    assert.equal(stop.signal, 'SIGTERM');
    assert.equal(await stop.received, 'SIGTERM');
    assert.deepEqual(exits, []);
  });

  it('ends the process at once with status 1 on a second signal', () => {
    const { said, exits } = watch(10_000);
    process.emit('SIGTERM', 'SIGTERM');
    process.emit('SIGINT', 'SIGINT');
    assert.deepEqual(exits, [1]);
    assert.match(said.join('\n'), /SIGINT again, exiting without waiting/);
  });

  it('ends a stop that stalls at the deadline, with status 1 and a line saying why', async () => {
    const { said, exits } = watch(100);
    process.emit('SIGINT', 'SIGINT');
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(exits, [], 'not before the deadline');
    await new Promise((resolve) => setTimeout(resolve, 150));
    assert.deepEqual(exits, [1]);
    assert.match(said.join('\n'), /shutdown did not finish within 0\.1 s of SIGINT; exiting without waiting/);
  });

  it('arms no deadline before a signal', async () => {
    const { exits } = watch(50);
    await new Promise((resolve) => setTimeout(resolve, 120));
    assert.deepEqual(exits, []);
  });
});
