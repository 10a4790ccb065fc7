#!/usr/bin/env node
// Entry point: the CLI (the commands load lazily so that `--help` and `status` stay fast).
await import('./commands.js');

export {};
