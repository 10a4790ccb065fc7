// Checks the process's ticket keys on the main thread: the rotation ring, its schedule, what an upgrade carries, key files and reloads.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { afterEach, beforeEach, describe, it, mock } from 'node:test';
import { TicketKeyring, keyName } from '../handshake/ticket-keys.js';
import { SessionTickets, type CarriedTickets, type PreparedTickets } from './session-tickets.js';

const HOUR = 3_600_000;
const generated = (rotateEveryMs = HOUR, lifetimeMs = rotateEveryMs): PreparedTickets => ({ settings: { rotateEveryMs, lifetimeMs } });

/** The keys of the current set, one Buffer per 48-byte key. */
function keysOf(t: SessionTickets): Buffer[] {
  const { keys } = t.current();
  return Array.from({ length: keys.length / 48 }, (_, i) => Buffer.from(keys.subarray(i * 48, i * 48 + 48)));
}

describe('session ticket keys', () => {
  let clock = 1_000_000;
  const now = () => clock;
  beforeEach(() => {
    clock = 1_000_000;
    mock.timers.enable({ apis: ['setTimeout'] });
  });
  afterEach(() => mock.timers.reset());

  it('starts with two fresh keys, encrypting with the first; each rotation adds one, keeps three, and encrypts with the penultimate', () => {
    const t = new SessionTickets(generated(), undefined, now);
    const [k0, k1] = keysOf(t);
    assert.equal(keysOf(t).length, 2);
    assert.equal(t.current().encrypt, 0);
    t.rotate();
    assert.deepEqual(keysOf(t).slice(0, 2), [k0, k1]);
    assert.equal(keysOf(t).length, 3);
    assert.equal(t.current().encrypt, 1, 'the key that was next now encrypts; the one that encrypted is still accepted');
    const k2 = keysOf(t)[2]!;
    t.rotate();
    assert.deepEqual(keysOf(t).slice(0, 2), [k1, k2], 'the oldest is dropped');
    assert.equal(t.current().encrypt, 1);
    assert.ok(!keysOf(t).some((k) => k.equals(k0!)));
    t.stop();
  });

  it('rotates on schedule and tells its listeners; after a long pause every key is new', () => {
    const t = new SessionTickets(generated(HOUR), undefined, now);
    const heard: string[] = [];
    t.onChange((why) => heard.push(why));
    const first = keysOf(t);
    clock += HOUR - 1;
    mock.timers.tick(HOUR - 1);
    assert.deepEqual(heard, []);
    clock += 1;
    mock.timers.tick(1);
    assert.deepEqual(heard, ['rotated (1)']);
    assert.deepEqual(keysOf(t).slice(0, 2), first);
    clock += 10 * HOUR;
    mock.timers.tick(HOUR);
    assert.deepEqual(heard, ['rotated (1)', 'rotated (3)']);
    assert.ok(!keysOf(t).some((k) => first.some((f) => f.equals(k))));
    assert.equal(t.status().rotatedAt, new Date(clock).toISOString());
    t.stop();
  });

  it('continues from the keys and the schedule an upgrade carried, and zeroes the carried copy', () => {
    const before = new SessionTickets(generated(HOUR), undefined, now);
    before.rotate();
    clock += HOUR / 2;
    const carried: CarriedTickets = before.carry();
    const keys = keysOf(before);
    before.stop();
    const after = new SessionTickets(generated(HOUR), carried, now);
    assert.deepEqual(keysOf(after), keys);
    assert.equal(after.current().encrypt, 1);
    assert.ok(
      carried.keys.every((b) => b === 0),
      'the carried copy is zeroed',
    );
    const heard: string[] = [];
    after.onChange((why) => heard.push(why));
    clock += HOUR / 2;
    mock.timers.tick(HOUR / 2);
    assert.deepEqual(heard, ['rotated (1)'], 'rotated an hour after the previous image last did, not an hour after the exec');
    after.stop();
  });

  it('uses a key file as given, never rotates it, and goes back to generated keys (the file’s kept) when the file is no longer configured', () => {
    const file = crypto.randomBytes(3 * 48);
    const fileKeys = [0, 1, 2].map((i) => Buffer.from(file.subarray(i * 48, i * 48 + 48)));
    const settings = { rotateEveryMs: HOUR, lifetimeMs: 12 * HOUR, keyFile: '/etc/t.keys' };
    const carried = new SessionTickets(generated(), undefined, now).carry();
    const t = new SessionTickets({ settings, file: Buffer.from(file) }, carried, now);
    assert.ok(
      carried.keys.every((b) => b === 0),
      'keys carried from the previous image give way to the file, zeroed',
    );
    assert.deepEqual(keysOf(t), fileKeys);
    assert.deepEqual([t.current().encrypt, t.current().lifetimeS, t.status().source], [1, 43_200, 'key_file']);
    const heard: string[] = [];
    t.onChange((why) => heard.push(why));
    clock += 100 * HOUR;
    mock.timers.tick(100 * HOUR);
    assert.deepEqual(heard, [], 'no rotation of a key file');
    const next = crypto.randomBytes(3 * 48);
    t.commit({ settings, file: Buffer.from(next) });
    assert.deepEqual(Buffer.concat(keysOf(t)), next);
    t.commit(generated(HOUR));
    assert.deepEqual(Buffer.concat(keysOf(t)), next, 'outstanding tickets stay good');
    assert.equal(t.status().source, 'generated');
    clock += HOUR;
    mock.timers.tick(HOUR);
    assert.deepEqual(heard, ['read /etc/t.keys', 'reloaded', 'rotated (1)']);
    assert.deepEqual(keysOf(t).slice(0, 2), [Buffer.from(next.subarray(48, 96)), Buffer.from(next.subarray(96))]);
    t.stop();
  });

  it('gives each worker a copy in an ArrayBuffer of its own, and shows only the first bytes of key names', () => {
    const t = new SessionTickets(generated(), undefined, now);
    const a = t.current();
    const b = t.current();
    assert.notEqual(a.keys.buffer, b.keys.buffer);
    assert.equal(a.keys.byteOffset, 0);
    assert.equal(a.keys.buffer.byteLength, a.keys.length);
    a.keys.fill(0);
    assert.ok(
      b.keys.some((x) => x !== 0),
      'zeroing one copy leaves the others',
    );
    const s = t.status();
    assert.equal(s.names.length, 2);
    assert.ok(s.names.every((n) => /^[0-9a-f]{8}$/.test(n)));
    assert.equal(JSON.stringify(s).includes(Buffer.from(b.keys).toString('hex').slice(0, 20)), false);
    t.stop();
  });

  it('the bridge’s detached copy moves to the next key when the rotation is due, the key the image encrypts with after rotating', () => {
    clock += HOUR / 2;
    const t = new SessionTickets(generated(), undefined, now);
    t.rotate(); // three keys, as after the first scheduled rotation
    const d = t.detached();
    assert.equal(d.advanceAt, clock + HOUR);
    const bridge = new TicketKeyring(d);
    const named = (keys: Uint8Array, i: number) => Buffer.from(keyName(keys, i)).toString('hex');
    assert.equal(bridge.encrypting(clock), t.current().encrypt, 'until the rotation: the key the image encrypts with');
    clock += HOUR;
    mock.timers.tick(HOUR);
    const after = t.current();
    assert.equal(named(d.keys, bridge.encrypting(clock)), named(after.keys, after.encrypt), 'after it: the image’s new one');
    assert.ok(after.keys.length / 48 === 3 && named(after.keys, 0) === named(d.keys, 1), 'and the key it left is still accepted');
    const file = new SessionTickets({ settings: { rotateEveryMs: HOUR, lifetimeMs: HOUR, keyFile: '/k' }, file: crypto.randomBytes(3 * 48) }, undefined, now);
    assert.equal(file.detached().advanceAt, undefined, 'a key file never rotates here: nor does its copy');
    bridge.wipe();
    t.stop();
    file.stop();
  });
});
