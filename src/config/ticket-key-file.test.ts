// Checks [session_tickets] and its key file: HAProxy's tls-ticket-keys format read from bytes, what is refused and why, `ironsocket check`.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { makeCert, runCli, tempDir } from '../testkit/proxy-process.js';
import { resolveConfig } from './load.js';
import { ConfigError } from './schema.js';
import { checkTicketKeyFile, parseTicketKeys, readTicketKeyFile, TicketKeyFileError } from './ticket-key-file.js';

/** `n` keys of `size` bytes, and the file text HAProxy reads (one base64 key per line). */
function keyLines(n: number, size = 48): { keys: Buffer[]; text: string } {
  const keys = Array.from({ length: n }, () => crypto.randomBytes(size));
  return { keys, text: keys.map((k) => k.toString('base64')).join('\n') + '\n' };
}

function refused(text: string): string {
  try {
    parseTicketKeys(Buffer.from(text), 'keys.txt');
  } catch (e) {
    assert.ok(e instanceof TicketKeyFileError, String(e));
    return e.message;
  }
  assert.fail('expected the file to be refused');
}

describe('session_tickets.key_file', () => {
  let dir: string;
  let cert: { certFile: string; keyFile: string };
  before(async () => {
    dir = tempDir('ticket-keys');
    cert = await makeCert(dir, 'ec');
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('keeps the last 3 keys of the file, oldest first, each 48 bytes packed in order (HAProxy uses the same 3)', () => {
    const { keys, text } = keyLines(5);
    const r = parseTicketKeys(Buffer.from(text), 'keys.txt');
    assert.deepEqual(r.keys, Buffer.concat(keys.slice(2)));
    assert.equal(r.keys.byteOffset, 0, 'in a buffer of its own');
    assert.equal(r.keys.buffer.byteLength, 3 * 48);
  });

  it('takes CRLF line ends and a last line without a newline, as HAProxy does', () => {
    const { keys } = keyLines(3);
    const r = parseTicketKeys(Buffer.from(keys.map((k) => k.toString('base64')).join('\r\n')), 'keys.txt');
    assert.deepEqual(r.keys, Buffer.concat(keys));
  });

  it('zeroes the bytes it was given, whether it accepts them or not', () => {
    const good = Buffer.from(keyLines(3).text);
    parseTicketKeys(good, 'keys.txt');
    assert.ok(good.every((b) => b === 0));
    const bad = Buffer.from('not base64!\n');
    assert.throws(() => parseTicketKeys(bad, 'keys.txt'));
    assert.ok(bad.every((b) => b === 0));
  });

  it('refuses 80-byte AES-256 keys, saying that only 48-byte keys work and why', () => {
    const msg = refused(keyLines(3, 80).text);
    assert.match(msg, /^session_tickets\.key_file keys\.txt: line 1: an 80-byte \(AES-256\) key; only 48-byte keys \(AES-128\) can be used/);
    assert.match(msg, /AES-128-CBC/);
    assert.match(msg, /openssl rand 48 \| base64/);
  });

  it('refuses fewer than 3 keys, a line that is not base64, an empty line and a key of another size, naming the line', () => {
    assert.match(refused(keyLines(2).text), /keys\.txt: 2 key\(s\); at least 3 are needed, as for HAProxy/);
    const { text } = keyLines(3);
    assert.match(refused(text.replace(/^./, '*')), /line 1: not a base64 key/);
    assert.match(refused(`${text}\n`), /line 4: not a base64 key/);
    assert.match(refused(text + crypto.randomBytes(32).toString('base64') + '\n'), /line 4: a key of 32 bytes; each must be 48 bytes/);
    assert.match(refused(text.slice(0, 10) + text.slice(11)), /line 1: not a base64 key/);
  });

  it('reads a file, and warns (without refusing) when its group or others can read it', async () => {
    const file = path.join(dir, 'tickets.keys');
    const { keys, text } = keyLines(4);
    fs.writeFileSync(file, text, { mode: 0o600 });
    const ok = await readTicketKeyFile(file);
    assert.deepEqual(ok.keys, Buffer.concat(keys.slice(1)));
    assert.equal(ok.warning, undefined);
    fs.chmodSync(file, 0o644);
    const loose = await readTicketKeyFile(file);
    assert.equal(loose.warning, `session ticket key file ${file} has mode 0644: its group or other users can read it; run chmod 600 ${file}`);
    await assert.rejects(readTicketKeyFile(path.join(dir, 'absent')), /session_tickets\.key_file .*absent: no such file/);
    assert.deepEqual((await checkTicketKeyFile(path.join(dir, 'absent'))).problems.length, 1);
  });

  it('defaults to keys rotated every 2h with tickets living 2h; a key file has no rotation of ours', async () => {
    const write = (text: string) => {
      const file = path.join(dir, 'c.toml');
      fs.writeFileSync(file, `cert = "${cert.certFile}"\nkey = "${cert.keyFile}"\n${text}`);
      return resolveConfig({ file, flags: {}, generateDefaultCert: false });
    };
    assert.deepEqual((await write('')).config.sessionTickets, { rotateEveryMs: 7_200_000, lifetimeMs: 7_200_000 });
    assert.deepEqual((await write('[session_tickets]\nrotate_every = "10m"\n')).config.sessionTickets, { rotateEveryMs: 600_000, lifetimeMs: 600_000 });
    assert.deepEqual((await write('[session_tickets]\nrotate_every = "1h"\nlifetime = "5m"\n')).config.sessionTickets, {
      rotateEveryMs: 3_600_000,
      lifetimeMs: 300_000,
    });
    assert.deepEqual((await write('[session_tickets]\nkey_file = "t.keys"\nlifetime = "12h"\n')).config.sessionTickets, {
      rotateEveryMs: 7_200_000,
      lifetimeMs: 43_200_000,
      keyFile: path.join(dir, 't.keys'),
    });
    const problems = async (text: string) => {
      try {
        await write(text);
      } catch (e) {
        assert.ok(e instanceof ConfigError);
        return e.problems.join('\n');
      }
      assert.fail('expected a ConfigError');
    };
    assert.match(
      await problems('[session_tickets]\nrotate_every = "1h"\nlifetime = "2h"\n'),
      /session_tickets\.lifetime: expected at most rotate_every \(3600s\): a ticket is accepted under the current and the previous key only/,
    );
    assert.match(await problems('[session_tickets]\nlifetime = "3h"\n'), /expected at most rotate_every \(7200s\)/);
    assert.match(await problems('[session_tickets]\nkey_file = "t.keys"\nrotate_every = "1h"\n'), /session_tickets\.rotate_every: not with key_file/);
    assert.match(await problems('[session_tickets]\nkey_file = "t.keys"\nlifetime = "8d"\n'), /session_tickets\.lifetime: expected at most 7d/);
    assert.match(await problems('[session_tickets]\nrotate_every = "500ms"\n'), /session_tickets\.rotate_every: expected a duration of at least 1s/);
    assert.match(
      await problems('[session_tickets]\nrotation = "1h"\n'),
      /session_tickets\.rotation: unknown key \(allowed here: rotate_every, lifetime, key_file\)/,
    );
  });

  it('`ironsocket check` refuses a bad key file with the reason, and warns about one others can read', async () => {
    const file = path.join(dir, 'check.keys');
    const config = path.join(dir, 'check.toml');
    fs.writeFileSync(config, `cert = "${cert.certFile}"\nkey = "${cert.keyFile}"\n[session_tickets]\nkey_file = "check.keys"\n`);
    fs.writeFileSync(file, keyLines(3, 80).text, { mode: 0o600 });
    let r = await runCli(['check', '--config', config]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /session_tickets\.key_file .*check\.keys: line 1: an 80-byte \(AES-256\) key/);
    fs.writeFileSync(file, keyLines(3).text);
    r = await runCli(['check', '--config', config]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /warning/);
    fs.chmodSync(file, 0o640);
    r = await runCli(['check', '--config', config]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /warning: session ticket key file .*check\.keys has mode 0640/);
  });
});
