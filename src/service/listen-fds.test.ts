// Socket activation as a real child process sees it: sockets on fds 3 and 4 with LISTEN_PID = its own PID, and the variables it must refuse.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { AF_INET, AF_INET6, AF_UNIX, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_STREAM, sys } from '../kernel/libc.js';
import { encodeSockaddr, encodeUnixSockaddr } from '../kernel/sockaddr.js';
import { describeSocket, listenFds, unsetListenEnv } from './listen-fds.js';

const openFds = () => fs.readdirSync('/proc/self/fd').length;
const moduleUrl = new URL('./listen-fds.js', import.meta.url).href;
const libcUrl = new URL('../kernel/libc.js', import.meta.url).href;

/**
 * What the child reports: the descriptors listenFds() gave it, or the error it threw; and whether
 * its fds CHECK_FDS (default 3 and 4) are close-on-exec after.
 */
const CHILD = `
const { listenFds, describeSocket } = await import(${JSON.stringify(moduleUrl)});
const { sys } = await import(${JSON.stringify(libcUrl)});
const out = { pid: process.pid };
const check = (process.env.CHECK_FDS ?? '3,4').split(',').map(Number);
// Node's own start-up already marks inherited fds 3, 4, ... close-on-exec; undo that to see what listenFds does.
for (const fd of check) sys.setCloexec(fd, false);
try {
  out.fds = listenFds().map((f) => {
    try {
      return { ...f, ...describeSocket(f.fd) };
    } catch (e) {
      return { ...f, type: e.code };
    }
  });
} catch (e) {
  out.error = e.message;
}
out.cloexec = check.map((fd) => sys.isCloexec(fd));
process.stdout.write(JSON.stringify(out));
`;

interface ChildReport {
  pid: number;
  fds?: { fd: number; name?: string; type: string; family: string; listening: boolean; address: string }[];
  error?: string;
  cloexec: boolean[];
}

/**
 * Runs node with `fd3` and `fd4` as its fds 3 and 4. With ownPid, `sh` sets LISTEN_PID to its own
 * PID and execs node, which keeps that PID, as systemd does between fork and exec.
 */
function runChild(fd3: number, fd4: number, env: Record<string, string>, ownPid: boolean): Promise<ChildReport> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
  delete childEnv.NODE_TEST_CONTEXT;
  const script = ownPid ? 'LISTEN_PID=$$ exec "$@"' : 'exec "$@"';
  const child = spawn('sh', ['-c', script, 'sh', process.execPath, '--input-type=module', '-e', CHILD], {
    stdio: ['ignore', 'pipe', 'pipe', fd3, fd4],
    env: childEnv,
  });
  return report(child);
}

/** The JSON the child prints, once it has exited 0 (checked to be the PID it was started as). */
function report(child: ChildProcess): Promise<ChildReport> {
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d));
  child.stderr!.on('data', (d: Buffer) => (stderr += d));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`child exited ${code}: ${stderr}`));
      const r = JSON.parse(stdout) as ChildReport;
      assert.equal(r.pid, child.pid, 'exec kept the PID the child was started with');
      resolve(r);
    });
  });
}

function tcpListener(host: string): { fd: number; address: string } {
  const fd = sys.socket(host.includes(':') ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC);
  sys.bind(fd, encodeSockaddr({ host, port: 0 }));
  sys.listen(fd, 16);
  return { fd, address: describeSocket(fd).address };
}

function udpSocket(host: string): { fd: number; address: string } {
  const fd = sys.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC);
  sys.bind(fd, encodeSockaddr({ host, port: 0 }));
  return { fd, address: describeSocket(fd).address };
}

test('a child whose LISTEN_PID is its own PID gets fds 3 and 4 with their names and addresses, made close-on-exec', async () => {
  const tcp = tcpListener('127.0.0.1');
  const udp = udpSocket('127.0.0.1');
  try {
    assert.match(tcp.address, /^127\.0\.0\.1:\d+$/);
    const r = await runChild(tcp.fd, udp.fd, { LISTEN_FDS: '2', LISTEN_FDNAMES: 'https:quic' }, true);
    assert.equal(r.error, undefined);
    assert.deepEqual(r.fds, [
      { fd: 3, name: 'https', type: 'stream', family: 'inet', listening: true, address: tcp.address },
      { fd: 4, name: 'quic', type: 'dgram', family: 'inet', listening: false, address: udp.address },
    ]);
    assert.deepEqual(r.cloexec, [true, true]);
  } finally {
    sys.close(tcp.fd);
    sys.close(udp.fd);
  }
});

test('a child whose LISTEN_PID names another process takes nothing and leaves its fds as they were', async () => {
  const tcp = tcpListener('127.0.0.1');
  const udp = udpSocket('127.0.0.1');
  try {
    const r = await runChild(tcp.fd, udp.fd, { LISTEN_PID: String(process.pid), LISTEN_FDS: '2', LISTEN_FDNAMES: 'https:quic' }, false);
    assert.deepEqual(r.fds, []);
    assert.deepEqual(r.cloexec, [false, false]);
  } finally {
    sys.close(tcp.fd);
    sys.close(udp.fd);
  }
});

test('a passed descriptor that is not a socket is taken (the fd store passes pipes and memfds too)', async () => {
  const tcp = tcpListener('127.0.0.1');
  const [rd, wr] = sys.pipe();
  try {
    const r = await runChild(tcp.fd, rd, { LISTEN_FDS: '2', LISTEN_FDNAMES: 'listener:conn-c1' }, true);
    assert.deepEqual(
      r.fds?.map((f) => [f.fd, f.name, f.type]),
      [
        [3, 'listener', 'stream'],
        [4, 'conn-c1', 'ENOTSOCK'],
      ],
    );
    assert.deepEqual(r.cloexec, [true, true]);
  } finally {
    sys.close(tcp.fd);
    sys.close(rd);
    sys.close(wr);
  }
});

test('a passed descriptor that is not open is refused with an error naming the fd', async () => {
  const tcp = tcpListener('127.0.0.1');
  const [rd, wr] = sys.pipe();
  try {
    // Node itself holds a few fds past 4 (epoll, eventfds): the first one it does not hold is named.
    const r = await runChild(tcp.fd, rd, { LISTEN_FDS: '500' }, true);
    assert.equal(r.fds, undefined);
    assert.match(r.error ?? '', /^socket activation: LISTEN_FDS=500 but fd (\d+) is not open$/);
  } finally {
    sys.close(tcp.fd);
    sys.close(rd);
    sys.close(wr);
  }
});

test('malformed LISTEN_PID, LISTEN_FDS or LISTEN_FDNAMES are refused with an error naming the variable', () => {
  const me = String(process.pid);
  assert.throws(() => listenFds({ LISTEN_PID: me, LISTEN_FDS: 'two' }), /LISTEN_FDS="two" is not a non-negative decimal integer/);
  assert.throws(() => listenFds({ LISTEN_PID: me, LISTEN_FDS: '-1' }), /LISTEN_FDS="-1"/);
  assert.throws(() => listenFds({ LISTEN_PID: me, LISTEN_FDS: '' }), /LISTEN_FDS=""/);
  assert.throws(() => listenFds({ LISTEN_PID: `${me}x`, LISTEN_FDS: '1' }), /LISTEN_PID="\d+x" is not/);
  assert.throws(() => listenFds({ LISTEN_PID: '0', LISTEN_FDS: '1' }), /LISTEN_PID=0 names no process/);
  assert.throws(() => listenFds({ LISTEN_PID: me, LISTEN_FDS: '2', LISTEN_FDNAMES: 'https' }), /LISTEN_FDNAMES has 1 name\(s\) \("https"\) for LISTEN_FDS=2/);
  assert.throws(() => listenFds({ LISTEN_PID: me, LISTEN_FDS: '1', LISTEN_FDNAMES: 'a:b' }), /LISTEN_FDNAMES has 2 name/);
});

test('without LISTEN_PID or LISTEN_FDS, or with LISTEN_FDS=0, there is nothing to take', () => {
  const me = String(process.pid);
  assert.deepEqual(listenFds({}), []);
  assert.deepEqual(listenFds({ LISTEN_FDS: '2' }), []);
  assert.deepEqual(listenFds({ LISTEN_PID: me }), []);
  assert.deepEqual(listenFds({ LISTEN_PID: me, LISTEN_FDS: '0' }), []);
  assert.deepEqual(listenFds({ LISTEN_PID: String(process.pid + 1), LISTEN_FDS: 'garbage' }), []);
  assert.deepEqual(listenFds({ LISTEN_PID: '1', LISTEN_FDS: '2' }, 1234), []);
});

test('unsetListenEnv removes the three socket-activation variables and nothing else', () => {
  const env: NodeJS.ProcessEnv = { LISTEN_PID: '1', LISTEN_FDS: '1', LISTEN_FDNAMES: 'x', NOTIFY_SOCKET: '/run/systemd/notify', PATH: '/bin' };
  unsetListenEnv(env);
  assert.deepEqual(env, { NOTIFY_SOCKET: '/run/systemd/notify', PATH: '/bin' });
});

test('describeSocket tells listening TCP over IPv4 and IPv6, a bound UDP socket and Unix sockets apart', () => {
  const before = openFds();
  const v4 = tcpListener('127.0.0.1');
  const v6 = tcpListener('::1');
  const udp = udpSocket('127.0.0.1');
  const abstractName = `@ironsocket-test-describe-${process.pid}`;
  const unix = sys.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
  const unbound = sys.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC);
  try {
    sys.bind(unix, encodeUnixSockaddr(abstractName));
    assert.deepEqual(describeSocket(v4.fd), { type: 'stream', family: 'inet', listening: true, address: v4.address });
    assert.match(v4.address, /^127\.0\.0\.1:[1-9]\d*$/);
    assert.deepEqual(describeSocket(v6.fd), { type: 'stream', family: 'inet6', listening: true, address: v6.address });
    assert.match(v6.address, /^\[::1\]:[1-9]\d*$/);
    assert.deepEqual(describeSocket(udp.fd), { type: 'dgram', family: 'inet', listening: false, address: udp.address });
    assert.deepEqual(describeSocket(unix), { type: 'stream', family: 'unix', listening: false, address: abstractName });
    assert.deepEqual(describeSocket(unbound), { type: 'dgram', family: 'unix', listening: false, address: '' });
  } finally {
    for (const fd of [v4.fd, v6.fd, udp.fd, unix, unbound]) sys.close(fd);
  }
  assert.equal(openFds(), before);
});

const haveSocketActivate = spawnSync('systemd-socket-activate', ['--version'], { stdio: 'ignore' }).status === 0;

test("systemd's own systemd-socket-activate passes a socket that listenFds takes with its name", async () => {
  assert.ok(haveSocketActivate, 'systemd-socket-activate is not installed (Debian package systemd; .ci/run installs it)');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ironsocket-activate-'));
  const sock = path.join(dir, 'admin.sock');
  // It binds, waits for the first connection, then execs node (same PID) with LISTEN_* and only
  // the variables given with -E: no NODE_TEST_CONTEXT, nor anything else of ours.
  const args = ['-l', sock, '--fdname=admin', '-E', 'CHECK_FDS=3', process.execPath, '--input-type=module', '-e', CHILD];
  const child = spawn('systemd-socket-activate', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const done = report(child);
  let conn: net.Socket | undefined;
  try {
    for (let i = 0; !fs.existsSync(sock); i++) {
      if (i > 500) throw new Error(`systemd-socket-activate never bound ${sock}`);
      await sleep(10);
    }
    conn = net.connect(sock).on('error', () => {});
    const r = await done;
    assert.deepEqual(r.fds, [{ fd: 3, name: 'admin', type: 'stream', family: 'unix', listening: true, address: sock }]);
    assert.deepEqual(r.cloexec, [true]);
  } finally {
    conn?.destroy();
    child.kill();
    await done.catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
