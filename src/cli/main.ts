#!/usr/bin/env node
// Entry point. Exec'ed by an in-place upgrade, it restarts the relays before loading anything else (that is the stall).
if (process.env.IRONSOCKET_HANDOFF_FD && process.argv[2] === 'run') {
  const { startEarlyRestore } = await import('../upgrade/early.js');
  startEarlyRestore();
}
await import('./commands.js');

export {};
