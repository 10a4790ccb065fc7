// Proves the proxy behaves as a systemd notify service: READY/RELOADING/STOPPING at the right moments, same PID across an upgrade, socket activation.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { echoBackend, type Backend } from '../testkit/backends.js';
import { FakeNotifySocket, type NotifyMessage } from '../testkit/notify-socket.js';
import { CLI, startProxyProcess, type RunningProxy } from '../testkit/proxy-process.js';
import { echo } from '../testkit/tls-echo.js';

const run = promisify(execFile);

function tlsConnect(port: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => resolve(s));
    s.once('error', reject);
  });
}

/** The notifications so far as compact strings: "READY=1", "RELOADING=1", "STOPPING=1". */
const states = (msgs: NotifyMessage[]) => msgs.map((m) => ['READY', 'RELOADING', 'STOPPING'].filter((k) => m.fields[k] === '1').join('+')).filter(Boolean);

describe('systemd notify service', () => {
  let notify: FakeNotifySocket;
  let backend: Backend;
  let proxy: RunningProxy;

  before(async () => {
    notify = new FakeNotifySocket();
    backend = await echoBackend();
    proxy = await startProxyProcess({ backendPort: backend.port, args: ['--ktls', 'off'], env: { NOTIFY_SOCKET: notify.address } });
  });
  after(async () => {
    await proxy.stop();
    await backend.close();
    notify.close();
  });

  it('says READY=1 once it serves, with a status line', async () => {
    const ready = await notify.waitFor((m) => m.fields.READY === '1', 10_000);
    assert.match(ready.fields.STATUS ?? '', /^serving 1 listener\(s\)/);
  });

  it('says RELOADING=1 then READY=1 around an upgrade, from the same PID, and a connection keeps flowing', async () => {
    const live = await tlsConnect(proxy.port);
    assert.equal(await echo(live, 'before'), 'before');
    const seen = notify.messages().length;
    const { stdout } = await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket]);
    const outcome = JSON.parse(stdout) as { ok: boolean; pid: number; generation: number };
    assert.deepEqual([outcome.ok, outcome.pid, outcome.generation], [true, proxy.pid, 2]);
    await notify.waitFor((m) => m.fields.READY === '1' && /generation 2/.test(m.fields.STATUS ?? ''), 30_000);
    const during = notify.messages().slice(seen);
    assert.deepEqual(states(during), ['RELOADING', 'READY']);
    assert.match(during[0]!.fields.MONOTONIC_USEC ?? '', /^\d+$/);
    assert.match(during[1]!.fields.STATUS ?? '', /upgraded in place to generation 2/);
    assert.equal(await echo(live, 'after'), 'after');
    live.destroy();
  });

  it('says RELOADING=1 then READY=1 around a configuration reload (SIGHUP)', async () => {
    const seen = notify.messages().length;
    process.kill(proxy.pid, 'SIGHUP');
    await notify.waitFor((m) => m.fields.READY === '1' && /reload/.test(m.fields.STATUS ?? ''), 10_000);
    assert.deepEqual(states(notify.messages().slice(seen)), ['RELOADING', 'READY']);
  });

  it('says STOPPING=1 when it is told to stop', async () => {
    const seen = notify.messages().length;
    await proxy.stop();
    await notify.waitFor((m) => m.fields.STOPPING === '1', 10_000);
    assert.deepEqual(states(notify.messages().slice(seen)), ['STOPPING']);
  });
});

describe('socket activation', () => {
  it('serves on the listening socket systemd passes (LISTEN_FDS), and keeps it across an upgrade', async () => {
    const backend = await echoBackend();
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
    const proxy = await startProxyProcess({
      backendPort: backend.port,
      noListenFlags: true,
      args: ['--ktls', 'off', '--listen', `127.0.0.1:${port}`, '--backend', `127.0.0.1:${backend.port}`],
      activate: [fd],
    });
    try {
      server.close(); // our copy; the proxy holds its own
      assert.equal(proxy.port, port);
      const c = await tlsConnect(port);
      assert.equal(await echo(c, 'activated'), 'activated');
      await run(process.execPath, [CLI, 'upgrade', '--admin-socket', proxy.adminSocket]);
      assert.equal(await echo(c, 'still'), 'still');
      const again = await tlsConnect(port);
      assert.equal(await echo(again, 'new image'), 'new image');
      assert.equal(proxy.logs().filter((l) => /socket activation/.test(l)).length, 0, 'no socket was refused');
      c.destroy();
      again.destroy();
    } finally {
      await proxy.stop();
      await backend.close();
    }
  });
});
