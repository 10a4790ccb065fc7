// A forged or corrupted client record gets bad_record_mac and a close, and no other connection notices.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import tls from 'node:tls';
import { modeArgs, type Mode } from '../scenarios/real-clients.scenarios.js';
import { streamBackend } from '../testkit/backends.js';
import { startProxyProcess, type RunningProxy } from '../testkit/proxy-process.js';
import { streamThrough } from '../testkit/stream-client.js';
import { tamperShim } from '../testkit/tamper-shim.js';

export function recordIntegrityScenarios(mode: Mode): void {
  let backend: Awaited<ReturnType<typeof streamBackend>>;
  let proxy: RunningProxy;

  before(async () => {
    backend = await streamBackend();
    proxy = await startProxyProcess({ backendPort: backend.port, args: modeArgs(mode) });
  });

  after(async () => {
    await proxy?.stop();
    await backend?.close();
  });

  for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
    test(`a corrupted ${version} application record gets bad_record_mac and a close while a concurrent stream stays exact (${mode} mode)`, async () => {
      // The first application record: TLS 1.3's Finished is the client's first type-23 record; TLS 1.2's is type 22.
      const shim = await tamperShim(proxy.port, version === 'TLSv1.3' ? 2 : 1);
      try {
        const bystander = streamThrough(proxy.port, `bystander-${mode}-${version}`, 4 << 20);
        const err = await new Promise<NodeJS.ErrnoException>((resolve, reject) => {
          const s = tls.connect({ port: shim.port, host: '127.0.0.1', rejectUnauthorized: false, minVersion: version, maxVersion: version });
          // One record, then silence: the alert must be read, not a write error on a closed socket.
          s.on('secureConnect', () => s.write('SEED victim 1000000\n'));
          const t = setTimeout(() => reject(new Error(`no alert within 20 s (tampered ${shim.tampered()} record)`)), 20_000);
          s.on('error', (e) => {
            clearTimeout(t);
            resolve(e);
          });
          s.on('close', () => reject(new Error('closed without an alert')));
        });
        assert.equal(shim.tampered(), 1);
        assert.match(`${err.code} ${err.message}`, /BAD_RECORD_MAC|alert number 20/i);
        const r = await bystander;
        assert.ok(r.ok, `bystander stream: received ${r.received}, mismatch at ${r.mismatchAt}`);
        await proxy.waitForLog(/bad_record_mac|authentication|EBADMSG/i);
      } finally {
        shim.close();
      }
    });
  }
}
