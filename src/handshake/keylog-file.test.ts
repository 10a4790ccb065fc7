// The key log file (IRONSOCKET_KEYLOG_FILE) is written only when it is ours alone: no symlink, no other owner, no group/other access.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { echoBackend } from '../testkit/backends.js';
import { keylogFileProblem, openKeylogFile } from './keylog-file.js';
import { runCli } from '../testkit/proxy-process.js';

const MODULE = fileURLToPath(new URL('./keylog-file.js', import.meta.url));
const NOBODY = 65534;
const LINE = Buffer.from(`CLIENT_RANDOM ${'ab'.repeat(32)} ${'cd'.repeat(48)}\n`);

let dir: string;
let n = 0;
before(() => {
  dir = fs.mkdtempSync(join(tmpdir(), 'ironsocket-keylogfile-'));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));
const fresh = (name = 'keys.log') => join(dir, `${++n}-${name}`);

/** A 0600 file of ours with some content, to see that a refused open leaves it untouched. */
function ownFile(content = 'old\n'): string {
  const f = fresh('own.log');
  fs.writeFileSync(f, content, { mode: 0o600 });
  return f;
}

describe('opening the key log file', () => {
  it('refuses a symbolic link, even one to our own private file, and leaves the target untouched', () => {
    const target = ownFile();
    const link = fresh('link.log');
    fs.symlinkSync(target, link);
    assert.throws(() => openKeylogFile(link), /link\.log is a symbolic link; refusing to follow it/);
    assert.equal(fs.readFileSync(target, 'utf8'), 'old\n');
    const dangling = fresh('dangling.log');
    fs.symlinkSync(join(dir, 'nowhere', 'x.log'), dangling);
    assert.throws(() => openKeylogFile(dangling), /is a symbolic link/);
    assert.equal(fs.existsSync(join(dir, 'nowhere')), false);
  });

  it('refuses a file another user owns, even one we could write to', () => {
    assert.equal(process.getuid?.(), 0, 'this test needs root (CI runs as root) to give a file to another user');
    const f = fresh('theirs.log');
    fs.writeFileSync(f, '', { mode: 0o600 });
    fs.chownSync(f, NOBODY, NOBODY);
    assert.throws(() => openKeylogFile(f), /theirs\.log is owned by uid 65534, not by this process \(uid 0\); refusing to write TLS secrets to it/);
    assert.equal(fs.statSync(f).size, 0);
  });

  it('refuses our own file when its group or others may read or write it', () => {
    for (const mode of [0o640, 0o604, 0o620, 0o602]) {
      const f = ownFile();
      fs.chmodSync(f, mode);
      assert.throws(() => openKeylogFile(f), new RegExp(`can be read or written by its group or other users \\(mode ${mode.toString(8)}; chmod 600 it\\)`));
      assert.equal(fs.readFileSync(f, 'utf8'), 'old\n');
    }
  });

  it('refuses something that is not a regular file (a FIFO) without blocking on it', () => {
    const fifo = fresh('fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    // In a child: an open that blocks would hang this process for good.
    const code = `import(${JSON.stringify(MODULE)}).then((m)=>{try{m.openKeylogFile(process.argv[1]);console.log('opened')}catch(e){console.log(e.message)}})`;
    const r = spawnSync(process.execPath, ['-e', code, fifo], { encoding: 'utf8', timeout: 10_000 });
    assert.equal(r.signal, null, 'the open did not block');
    assert.match(r.stdout, /fifo is not a regular file.*; refusing to write TLS secrets to it/);
  });

  it('appends to our own 0600 file', () => {
    const f = ownFile();
    const k = openKeylogFile(f);
    k.write(LINE);
    k.close();
    assert.equal(fs.readFileSync(f, 'utf8'), 'old\n' + LINE.toString());
    assert.equal(keylogFileProblem(f), undefined);
  });

  it('creates a missing file with mode 0600, whatever the umask', () => {
    const f = fresh();
    const previous = process.umask(0);
    try {
      openKeylogFile(f).close();
    } finally {
      process.umask(previous);
    }
    const st = fs.statSync(f);
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal(st.uid, process.geteuid?.());
    assert.equal(keylogFileProblem(fresh()), undefined, 'check: a missing file is fine (run creates it)');
  });
});

const cli = (args: string[], env: NodeJS.ProcessEnv) => runCli(args, { env });

describe('a refused key log file at the command line', () => {
  it('`ironsocket run` refuses to start and says why, rather than running without the key log it was asked for', async () => {
    const backend = await echoBackend();
    try {
      const target = ownFile();
      const link = fresh('link.log');
      fs.symlinkSync(target, link);
      const base = fresh('run');
      const env = { ...process.env, IRONSOCKET_STATE_DIR: join(base, 'state'), IRONSOCKET_KEYLOG_FILE: link };
      const args = [
        'run',
        '--listen',
        '127.0.0.1:0',
        '--backend',
        `127.0.0.1:${backend.port}`,
        '--ktls',
        'off',
        '--admin-socket',
        join(base, 'admin', 'a.sock'),
      ];
      const r = await cli(args, env);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /ironsocket: cannot start: IRONSOCKET_KEYLOG_FILE=\S*link\.log: \S*link\.log is a symbolic link; refusing to follow it/);
      assert.equal(fs.readFileSync(target, 'utf8'), 'old\n');
    } finally {
      await backend.close();
    }
  });

  it('`ironsocket check` fails on a file others can read, and warns that key logging is on for a good one', async () => {
    const base = fresh('check');
    const env = { ...process.env, IRONSOCKET_STATE_DIR: join(base, 'state') };
    const loose = ownFile();
    fs.chmodSync(loose, 0o644);
    const bad = await cli(['check'], { ...env, IRONSOCKET_KEYLOG_FILE: loose });
    assert.equal(bad.code, 1, bad.stdout);
    assert.match(bad.stderr, /IRONSOCKET_KEYLOG_FILE=\S+: \S+ can be read or written by its group or other users \(mode 644; chmod 600 it\)/);
    const good = await cli(['check'], { ...env, IRONSOCKET_KEYLOG_FILE: ownFile() });
    assert.equal(good.code, 0, good.stderr);
    assert.match(good.stdout, /^config OK\n/);
    assert.match(good.stdout, /warning: IRONSOCKET_KEYLOG_FILE is set: the TLS secrets of every session are appended to /);
  });
});
