// sd_notify as systemd receives it: fields, MONOTONIC_USEC, descriptors for FDSTORE=1, and the errors the caller logs.
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { E, sys } from '../kernel/libc.js';
import { FakeNotifySocket } from '../testkit/notify-socket.js';
import { FdStore } from './fd-store.js';
import { NotifyError, SystemdNotifier, monotonicUsec } from './notify.js';

const openFds = () => fs.readdirSync('/proc/self/fd').length;
/** libuv's uv_hrtime (process.hrtime) reads clock_gettime(CLOCK_MONOTONIC) on Linux: an independent reading of the same clock. */
/** Bound abstract-namespace names, as /proc/net/unix lists them ("@name"). */
const abstractNames = () =>
  fs
    .readFileSync('/proc/net/unix', 'utf8')
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[7])
    .filter((p): p is string => p !== undefined && p.startsWith('@'));
const hrtimeUsec = () => process.hrtime.bigint() / 1000n;

for (const abstract of [false, true]) {
  const kind = abstract ? 'an abstract @name socket' : 'a socket path';
  test(`READY, STATUS, RELOADING with MONOTONIC_USEC, STOPPING and MAINPID arrive at ${kind}, one datagram each`, () => {
    const fake = new FakeNotifySocket({ abstract });
    try {
      // Checked outside the code under test, which shares the address encoding with the fake.
      if (abstract) assert.ok(abstractNames().includes(fake.address), `${fake.address} in /proc/net/unix`);
      else assert.ok(fs.statSync(fake.address).isSocket(), `${fake.address} is a socket file`);
      const n = SystemdNotifier.fromEnv({ NOTIFY_SOCKET: fake.address });
      assert.ok(n, 'a notifier for the fake socket');
      n.ready('listening on 127.0.0.1:8443');
      n.status('upgrading: 12 connections');
      const before = hrtimeUsec();
      n.reloading('upgrading');
      const after = hrtimeUsec();
      n.ready();
      n.stopping();
      n.mainPid(process.pid);
      const got = fake.messages();
      assert.deepEqual(
        got.map((m) => m.fields),
        [
          { READY: '1', STATUS: 'listening on 127.0.0.1:8443' },
          { STATUS: 'upgrading: 12 connections' },
          { RELOADING: '1', MONOTONIC_USEC: got[2]?.fields.MONOTONIC_USEC, STATUS: 'upgrading' },
          { READY: '1' },
          { STOPPING: '1' },
          { MAINPID: String(process.pid) },
        ],
      );
      assert.equal(got[0]!.raw, 'READY=1\nSTATUS=listening on 127.0.0.1:8443\n');
      const usec = BigInt(got[2]!.fields.MONOTONIC_USEC!);
      assert.ok(before <= usec && usec <= after, `MONOTONIC_USEC=${usec} not within [${before}, ${after}] of CLOCK_MONOTONIC`);
      assert.ok(got.every((m) => m.fds.length === 0));
    } finally {
      fake.close();
    }
  });
}

test('monotonicUsec reads CLOCK_MONOTONIC, the clock process.hrtime reads', () => {
  for (let i = 0; i < 100; i++) {
    const before = hrtimeUsec();
    const t = monotonicUsec();
    const after = hrtimeUsec();
    assert.ok(before <= t && t <= after, `${t} not within [${before}, ${after}]`);
  }
});

test('descriptors sent with FDSTORE=1 arrive as working copies of both ends of a pipe, and the fake closes its copies', async () => {
  const before = openFds();
  const fake = new FakeNotifySocket();
  const [r, w] = sys.pipe();
  try {
    new SystemdNotifier(fake.address).notify({ FDSTORE: 1, FDNAME: 'state' }, [r, w]);
    const m = await fake.waitFor((x) => x.fields.FDSTORE === '1', 2000);
    assert.equal(m.fields.FDNAME, 'state');
    assert.equal(m.fdCount, 2);
    const kept = fake.handBack();
    assert.deepEqual(kept.env, { LISTEN_FDS: '2', LISTEN_FDNAMES: 'state:state' });
    const [rCopy, wCopy] = kept.fds as [number, number];
    assert.ok(![r, w].includes(rCopy) && ![r, w].includes(wCopy), 'the receiver got its own descriptors');
    const buf = Buffer.alloc(64);
    const one = Buffer.from('written on the received copy');
    assert.equal(sys.write(wCopy, one, one.length), one.length);
    assert.equal(sys.read(r, buf, buf.length), one.length);
    assert.equal(buf.subarray(0, one.length).toString(), one.toString());
    const two = Buffer.from('read on the received copy');
    assert.equal(sys.write(w, two, two.length), two.length);
    assert.equal(sys.read(rCopy, buf, buf.length), two.length);
    assert.equal(buf.subarray(0, two.length).toString(), two.toString());
  } finally {
    sys.close(r);
    sys.close(w);
    fake.close(); // closes rCopy and wCopy
  }
  assert.equal(openFds(), before);
});

test('a value with a newline is refused before anything is sent', () => {
  const fake = new FakeNotifySocket();
  try {
    const n = new SystemdNotifier(fake.address);
    assert.throws(() => n.status('line one\nREADY=1'), /STATUS contains a newline/);
    assert.throws(() => n.notify({ READY: 1, STATUS: 'a\nb' }), /newline/);
    assert.throws(() => n.notify({ 'READY=1\nX': 1 }), /invalid field name/);
    assert.deepEqual(fake.messages(), []);
  } finally {
    fake.close();
  }
});

test('an unreachable NOTIFY_SOCKET gives an error naming the socket and the errno', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ironsocket-notify-gone-'));
  try {
    const missing = path.join(dir, 'no-such.sock');
    assert.throws(
      () => SystemdNotifier.fromEnv({ NOTIFY_SOCKET: missing })!.ready(),
      (e: unknown) =>
        e instanceof NotifyError && e.socket === missing && e.code === 'ENOENT' && e.message.includes(`NOTIFY_SOCKET=${missing}`) && /ENOENT/.test(e.message),
    );
    const unbound = `@ironsocket-test-nobody-${process.pid}-listens-here`;
    assert.throws(
      () => new SystemdNotifier(unbound).stopping(),
      (e: unknown) => e instanceof NotifyError && e.code === 'ECONNREFUSED' && e.message.includes(`NOTIFY_SOCKET=${unbound}`),
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('fromEnv gives no notifier without NOTIFY_SOCKET and refuses an address that is neither a path nor an @name', () => {
  assert.equal(SystemdNotifier.fromEnv({}), undefined);
  assert.equal(SystemdNotifier.fromEnv({ NOTIFY_SOCKET: '' }), undefined);
  assert.throws(() => SystemdNotifier.fromEnv({ NOTIFY_SOCKET: 'vsock:2:1234' }), /NOTIFY_SOCKET=vsock:2:1234: only an absolute path or an @abstract name/);
  assert.throws(() => SystemdNotifier.fromEnv({ NOTIFY_SOCKET: '/' + 'x'.repeat(200) }), /over the 107-byte limit/);
});

test('notifying leaves no descriptor open, and does not unset NOTIFY_SOCKET', () => {
  const fake = new FakeNotifySocket();
  try {
    const env = { NOTIFY_SOCKET: fake.address };
    const n = SystemdNotifier.fromEnv(env)!;
    const before = openFds();
    for (let i = 0; i < 8; i++) n.status(`tick ${i}`);
    assert.throws(() => new SystemdNotifier(fake.address + '.gone').ready(), NotifyError);
    assert.equal(openFds(), before);
    assert.equal(fake.messages().length, 8);
    assert.equal(env.NOTIFY_SOCKET, fake.address);
  } finally {
    fake.close();
  }
});

test('a child process given NOTIFY_SOCKET reaches the fake socket, which waitFor sees arrive', async () => {
  const fake = new FakeNotifySocket();
  try {
    const notifyUrl = new URL('./notify.js', import.meta.url).href;
    const code = `const { SystemdNotifier } = await import(${JSON.stringify(notifyUrl)});
      setTimeout(() => SystemdNotifier.fromEnv().ready('child ' + process.pid), 200);`;
    const env: NodeJS.ProcessEnv = { ...process.env, NOTIFY_SOCKET: fake.address };
    delete env.NODE_TEST_CONTEXT;
    const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'ignore', 'inherit'], env });
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    const m = await fake.waitFor((x) => x.fields.READY === '1', 10_000);
    assert.equal(m.fields.STATUS, `child ${child.pid}`);
    assert.equal(await exited, 0);
    await assert.rejects(
      fake.waitFor((x) => x.fields.STOPPING === '1', 50),
      /no matching notification on .* within 50 ms; received: "READY=1\\nSTATUS=child \d+\\n"/,
    );
  } finally {
    fake.close();
  }
});

const haveSystemdNotify = spawnSync('systemd-notify', ['--version'], { stdio: 'ignore' }).status === 0;

test("the fake socket reads what systemd's own systemd-notify sends, at a path and at an @name", async () => {
  assert.ok(haveSystemdNotify, 'systemd-notify is not installed (Debian package systemd; .ci/run installs it)');
  for (const abstract of [false, true]) {
    const fake = new FakeNotifySocket({ abstract });
    try {
      // --no-block: no BARRIER=1 round trip (the fake keeps received fds open until close()).
      const args = ['--no-block', '--ready', '--status=from systemd-notify', 'X_IRONSOCKET=1'];
      await promisify(execFile)('systemd-notify', args, { env: { ...process.env, NOTIFY_SOCKET: fake.address } });
      const m = await fake.waitFor((x) => x.fields.READY === '1', 5000);
      assert.deepEqual(m.fields, { READY: '1', STATUS: 'from systemd-notify', X_IRONSOCKET: '1' });
    } finally {
      fake.close();
    }
  }
});

test('the fake fd store keeps descriptors by name until FDSTOREREMOVE=1, which closes its copies', async () => {
  const before = openFds();
  const fake = new FakeNotifySocket();
  const store = new FdStore(new SystemdNotifier(fake.address));
  const [r, w] = sys.pipe();
  try {
    store.deposit('conn-c1', [r]);
    sys.close(r); // the store's copy is now the only read end
    await fake.waitForStore((e) => e.get('conn-c1') === 1, 2000);
    const one = Buffer.from('x');
    assert.equal(sys.write(w, one, 1), 1, "a reader is still open (the store's)");
    store.remove('conn-c1');
    await fake.waitForStore((e) => !e.has('conn-c1'), 2000);
    assert.equal(sys.write(w, one, 1), -E.EPIPE!, 'the store closed its copy: no reader is left');
    assert.throws(() => store.deposit('conn:c1', [w]), /invalid name "conn:c1"/);
  } finally {
    sys.close(w);
    fake.close();
  }
  assert.equal(openFds(), before);
});
