#!/usr/bin/env node
// Test-only CLI entry: installs the upgrade's fault hooks from IRONSOCKET_FAULT_* variables, then runs the real CLI (the shipped entry reads no such variable).
import { fileURLToPath } from 'node:url';
import { upgradeHooks } from '../carry/hooks.js';

/** exec this path instead of node: the exec fails and the old image must resume. */
const execPath = process.env.IRONSOCKET_FAULT_EXEC_PATH;
if (execPath) upgradeHooks.execPath = execPath;
/** Hold still this long just before execve (as a slow new image would keep the bridge in charge). */
const hold = Number(process.env.IRONSOCKET_FAULT_EXEC_HOLD_MS ?? 0);
if (hold > 0) upgradeHooks.beforeExec = () => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, hold);
/** "exit": the bridge dies before taking anything; "hold:MS": it holds still that long once non-dumpable; "gate:DIR": it holds at each batch until told to go on (testkit/fault-bridge.ts). */
if (process.env.IRONSOCKET_FAULT_BRIDGE) upgradeHooks.bridgeEntry = fileURLToPath(new URL('./fault-bridge.js', import.meta.url));

await import('../cli/main.js');

export {};
