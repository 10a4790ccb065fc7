// Test-only bridge entry: installs the fault IRONSOCKET_FAULT_BRIDGE names, then runs the real upgrade bridge.
import { upgradeHooks } from '../carry/hooks.js';

const fault = process.env.IRONSOCKET_FAULT_BRIDGE ?? '';
const hold = /^hold:(\d+)$/.exec(fault);
if (fault === 'exit') upgradeHooks.bridgeStarted = () => process.exit(70);
else if (hold) upgradeHooks.bridgeStarted = () => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Number(hold[1]));
else throw new Error(`IRONSOCKET_FAULT_BRIDGE=${fault}: expected "exit" or "hold:MS"`);

await import('../carry/bridge.js');

export {};
