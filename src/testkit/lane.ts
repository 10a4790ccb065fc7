// Test support: what a per-mode scenario file sets up first: the kTLS lane checks for its kernel, and an echo backend serves every test.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { readTlsStat } from '../kernel/probe.js';
import { echoBackend, type Backend } from './backends.js';

/** Fails a kTLS-lane run on a kernel without kernel TLS (never skips): the guard every per-mode scenario file runs first. */
export function assertLaneKernel(mode: 'user' | 'kernel'): void {
  if (mode === 'kernel') assert.ok(readTlsStat(), 'this lane needs a kernel with TLS (/proc/net/tls_stat)');
}

/** Registers the file's before/after hooks; the returned function gives the echo backend inside a test. */
export function laneWithEchoBackend(mode: 'user' | 'kernel'): () => Backend {
  let echo: Backend | undefined;
  before(async () => {
    assertLaneKernel(mode);
    echo = await echoBackend();
  });
  after(async () => {
    await echo?.close();
  });
  return () => {
    assert.ok(echo, 'the echo backend is not started yet');
    return echo;
  };
}
