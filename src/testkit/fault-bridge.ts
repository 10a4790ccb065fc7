// Test-only bridge entry: installs the fault IRONSOCKET_FAULT_BRIDGE names, then runs the real upgrade bridge.
import fs from 'node:fs';
import path from 'node:path';
import { upgradeHooks } from '../carry/hooks.js';

const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/**
 * "gate:DIR": at every batch (moving in, or going back) the bridge writes DIR/PID-N-MOMENT.held, the batch's clients
 * as JSON, and holds still (nobody relays those connections) until DIR/PID-N-MOMENT.go exists, 60 s at most.
 */
function gate(dir: string): (moment: 'adopt' | 'return', clients: string[]) => void {
  let n = 0;
  return (moment, clients) => {
    const name = path.join(dir, `${process.pid}-${String(++n).padStart(4, '0')}-${moment}`);
    fs.writeFileSync(`${name}.tmp`, JSON.stringify(clients));
    fs.renameSync(`${name}.tmp`, `${name}.held`);
    for (const until = Date.now() + 60_000; !fs.existsSync(`${name}.go`) && Date.now() < until;) sleep(2);
  };
}

const fault = process.env.IRONSOCKET_FAULT_BRIDGE ?? '';
const hold = /^hold:(\d+)$/.exec(fault);
const gated = /^gate:(.+)$/.exec(fault);
if (fault === 'exit') upgradeHooks.bridgeStarted = () => process.exit(70);
else if (hold) upgradeHooks.bridgeStarted = () => sleep(Number(hold[1]));
else if (gated) upgradeHooks.bridgeBatch = gate(gated[1]!);
else throw new Error(`IRONSOCKET_FAULT_BRIDGE=${fault}: expected "exit", "hold:MS" or "gate:DIR"`);

await import('../carry/bridge.js');

export {};
