// Checks the admin socket: request/response round trip, permissions, stale sockets and request limits.
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { chmod, lstat, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { StatusSnapshot } from '../core/types.js';
import { AdminError, adminRequest } from './client.js';
import { startAdminServer, type AdminHandlers } from './server.js';

let dir: string;
let n = 0;
const sockPath = () => join(dir, `run${++n}`, 'admin.sock');

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ironsocket-admin-'));
});
after(() => rm(dir, { recursive: true, force: true }));

const SNAPSHOT: StatusSnapshot = {
  pid: 1234,
  version: '0.1.0',
  startedAt: new Date(Date.now() - 3_723_000).toISOString(),
  ktls: { available: true, ciphers: { 'TLSv1.2': ['ECDHE-ECDSA-AES128-GCM-SHA256'], 'TLSv1.3': ['TLS_AES_128_GCM_SHA256'] }, rekey: true, policy: 'auto' },
  listeners: [{ address: '127.0.0.1:8443', backend: '127.0.0.1:8080' }],
  connections: [
    {
      id: 'c1',
      client: '127.0.0.1:50000',
      backend: '127.0.0.1:8080',
      version: 'TLSv1.3',
      cipher: 'TLS_AES_128_GCM_SHA256',
      mode: 'kernel',
      bytesIn: 1536,
      bytesOut: 5 * 1024 * 1024,
      ageMs: 65_000,
    },
  ],
  counters: { accepted: 1 },
};

const handlers: AdminHandlers = {
  status: () => SNAPSHOT,
  echo: (args) => args,
  fail: () => {
    throw new Error('boom');
  },
};

/** Sends raw bytes and collects everything the server answers until it closes. */
function raw(path: string, data: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(path, () => s.end(data));
    let out = '';
    s.on('data', (d) => (out += d));
    s.on('close', () => resolve(out));
    s.on('error', reject);
  });
}

describe('admin server and client', () => {
  it('answers a status request with the snapshot', async () => {
    const path = sockPath();
    const server = await startAdminServer(path, handlers);
    try {
      assert.deepEqual(await adminRequest(path, 'status'), SNAPSHOT);
      assert.deepEqual(await adminRequest(path, 'echo', { a: 1 }), { a: 1 });
    } finally {
      await server.close();
    }
  });

  it('creates the socket 0600 in a 0700 directory and removes it on close', async () => {
    const path = sockPath();
    const server = await startAdminServer(path, handlers);
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    assert.equal((await stat(join(path, '..'))).mode & 0o777, 0o700);
    await server.close();
    await assert.rejects(lstat(path), { code: 'ENOENT' });
  });

  it('reports handler errors and unknown commands as ok:false', async () => {
    const path = sockPath();
    const server = await startAdminServer(path, handlers);
    try {
      await assert.rejects(adminRequest(path, 'fail'), (e: unknown) => e instanceof AdminError && e.code === 'ADMIN_FAILED' && e.message === 'boom');
      await assert.rejects(adminRequest(path, 'toString'), /unknown command "toString"/);
      assert.deepEqual(JSON.parse(await raw(path, 'not json\n')), { ok: false, error: 'request is not valid JSON' });
    } finally {
      await server.close();
    }
  });

  it('answers several newline-delimited requests on one connection in order', async () => {
    const path = sockPath();
    const server = await startAdminServer(path, handlers);
    try {
      const out = await raw(path, '{"cmd":"echo","args":{"i":1}}\n{"cmd":"echo","args":{"i":2}}\n');
      assert.deepEqual(
        out
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l)),
        [
          { ok: true, result: { i: 1 } },
          { ok: true, result: { i: 2 } },
        ],
      );
    } finally {
      await server.close();
    }
  });

  it('rejects a request larger than 64 KiB', async () => {
    const path = sockPath();
    const server = await startAdminServer(path, handlers);
    try {
      const huge = JSON.stringify({ cmd: 'echo', args: { pad: 'x'.repeat(70 * 1024) } }) + '\n';
      const answer = JSON.parse((await raw(path, huge)).trim());
      assert.deepEqual(answer, { ok: false, error: 'request too large (limit 65536 bytes)' });
      assert.deepEqual(await adminRequest(path, 'echo', { still: 'alive' }), { still: 'alive' });
    } finally {
      await server.close();
    }
  });

  it('replaces a stale socket file that nobody listens on', async () => {
    const path = sockPath();
    await mkdir(join(path, '..'), { mode: 0o700 });
    // A crashed process leaves its socket file behind (a clean close would unlink it).
    const code = `require('node:net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`;
    spawnSync(process.execPath, ['-e', code]);
    assert.ok((await lstat(path)).isSocket());
    const server = await startAdminServer(path, handlers);
    try {
      assert.equal((await adminRequest<StatusSnapshot>(path, 'status')).pid, 1234);
    } finally {
      await server.close();
    }
  });

  it('refuses to start while another server answers on the socket', async () => {
    const path = sockPath();
    const first = await startAdminServer(path, handlers);
    try {
      await assert.rejects(startAdminServer(path, handlers), /another ironsocket is running/);
      assert.equal((await adminRequest<StatusSnapshot>(path, 'status')).pid, 1234);
    } finally {
      await first.close();
    }
  });

  it('refuses to replace a file that is not a socket', async () => {
    const path = sockPath();
    await mkdir(join(path, '..'), { mode: 0o700 });
    await writeFile(path, 'precious');
    await assert.rejects(startAdminServer(path, handlers), /exists and is not a socket/);
  });

  it('refuses a directory that other users can write to', async () => {
    const path = sockPath();
    await mkdir(join(path, '..'));
    await chmod(join(path, '..'), 0o777);
    await assert.rejects(startAdminServer(path, handlers), /writable by other users/);
  });

  it('answers another user with permission denied even when the socket mode would let them in', async () => {
    assert.equal(process.getuid?.(), 0, 'this test needs root (CI runs as root) to act as another user');
    const path = sockPath();
    const server = await startAdminServer(path, handlers);
    try {
      // Open the doors the file modes keep shut: only the peer-uid check is left.
      await chmod(dir, 0o755);
      await chmod(join(path, '..'), 0o755);
      await chmod(path, 0o666);
      const code = `const s=require('net').connect(${JSON.stringify(path)});s.on('connect',()=>s.write('{"cmd":"status"}\\n'));let d='';s.on('data',c=>d+=c);s.on('close',()=>process.stdout.write(d));s.on('error',e=>process.stdout.write('error '+e.code))`;
      // Not spawnSync: the server answering it runs on this thread.
      const r = await promisify(execFile)('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', code], { timeout: 20_000 });
      assert.deepEqual(JSON.parse(r.stdout), { ok: false, error: 'permission denied: uid 65534 may not use this admin socket' });
      assert.equal((await adminRequest<StatusSnapshot>(path, 'status')).pid, 1234, 'root is still served');
    } finally {
      await chmod(dir, 0o700);
      await server.close();
    }
  });

  it('tells the client when nothing is running', async () => {
    const path = sockPath();
    await assert.rejects(
      adminRequest(path, 'status'),
      (e: unknown) => e instanceof AdminError && e.code === 'ADMIN_UNREACHABLE' && /is ironsocket running\? admin socket: /.test(e.message),
    );
  });

  it('gives up on a server that never answers', async () => {
    const path = sockPath();
    await mkdir(join(path, '..'), { mode: 0o700 });
    const held = new Set<import('node:net').Socket>();
    const mute = createServer((s) => held.add(s));
    await new Promise<void>((r) => mute.listen(path, r));
    try {
      await assert.rejects(adminRequest(path, 'status', undefined, 200), (e: unknown) => e instanceof AdminError && e.code === 'ADMIN_TIMEOUT');
    } finally {
      for (const s of held) s.destroy();
      await new Promise((r) => mute.close(r));
    }
  });
});
