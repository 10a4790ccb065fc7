// Test support: one proxy process over an echo backend for a scenario file, and scripted clients against it, all gone after the file.
import { after, before } from 'node:test';
import { echoBackend, type Backend } from './backends.js';
import { startProxyProcess, type RunningProxy } from './proxy-process.js';
import { scriptedClient, type ScriptOptions, type ScriptedClient } from './scripted-client.js';

/** Registers before/after hooks: a proxy started with `args`, echoing through it; `client()` connects a scripted client. */
export function scriptedProxy(args: string[]): { proxy(): RunningProxy; client(opts: ScriptOptions): Promise<ScriptedClient> } {
  let echo: Backend;
  let proxy: RunningProxy;
  const open: ScriptedClient[] = [];

  before(async () => {
    echo = await echoBackend();
    proxy = await startProxyProcess({ backendPort: echo.port, args });
  });

  after(async () => {
    for (const c of open) c.destroy();
    await proxy?.stop();
    await echo?.close();
  });

  return {
    proxy: () => proxy,
    async client(opts) {
      const c = await scriptedClient(proxy.port, opts);
      open.push(c);
      return c;
    },
  };
}
