// One client flooding records without data after the handshake is cut off after a bounded allowance, with bounded log lines, while others are served.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { modeArgs, type Mode } from '../scenarios/real-clients.scenarios.js';
import { eventually } from '../testkit/proxy-process.js';
import type { ScriptOptions, ScriptedClient } from '../testkit/scripted-client.js';
import { scriptedProxy } from '../testkit/scripted-proxy.js';
import { NON_DATA_BURST, NOTES_UNLIMITED, TURN_READS } from './budget.js';
import { ALERT } from './client-side.js';

const FLOOD = 20_000;

export function floodScenarios(mode: Mode): void {
  const { client, proxy } = scriptedProxy([...modeArgs(mode), '--workers', '2']);

  /** The proxy's log lines about the connection from this client. */
  const linesOf = (c: ScriptedClient) => {
    const est = proxy()
      .logs()
      .find((l) => l.includes(`127.0.0.1:${c.localPort}"`) && l.includes('"conn"'));
    assert.ok(est, `no log line names 127.0.0.1:${c.localPort}`);
    const conn = (JSON.parse(est) as { conn: string }).conn;
    return proxy()
      .logs()
      .filter((l) => l.includes(`"conn":"${conn}"`));
  };

  /** Floods `count` records from a client that does not read meanwhile, and checks that another client is served. */
  const flood = async (what: string, opts: ScriptOptions, record: (c: ScriptedClient) => Buffer, count: number) => {
    const good = await client({ version: 'TLSv1.3' });
    const c = await client(opts);
    c.pauseReading(1000);
    const batch: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      batch.push(record(c));
      if (batch.length === 1000 || i === count - 1) c.send(Buffer.concat(batch.splice(0)));
    }
    good.send(good.seal(23, Buffer.from('still served')));
    assert.equal((await good.readData(12, 30_000)).toString(), 'still served', `${what}: another connection's echo`);
    good.destroy();
    return c;
  };

  /** A flood the allowance must end: unexpected_message, a clean end, a few log lines. */
  const cutOff = async (what: string, opts: ScriptOptions, record: (c: ScriptedClient) => Buffer, count = FLOOD) => {
    const c = await flood(what, opts, record, count);
    const got = await c.alert(20_000);
    assert.deepEqual(got.alert, [2, ALERT.unexpected_message], `${what}: ${JSON.stringify(got)}`);
    assert.equal(await c.ended(5000), 'fin', `${what}: a clean end after the alert`);
    await eventually(() => linesOf(c).some((l) => /closed: client sent records without data faster than allowed/.test(l)), 10_000, `${what}: the close logged`);
    const lines = linesOf(c);
    // established, up to NOTES_UNLIMITED notes, the unlogged count, closed (and a line or two of the connection's life).
    assert.ok(lines.length <= NOTES_UNLIMITED + 5, `${what}: ${lines.length} log lines for one flooding connection:\n${lines.join('\n')}`);
    const status = await proxy().status();
    assert.ok((status.counters.closed_protocol_error ?? 0) >= 1);
  };

  if (mode === 'user') {
    test(`${FLOOD} KeyUpdate(update_requested) records from a client that does not read: cut off after ${NON_DATA_BURST} with unexpected_message and a few log lines, others served (user mode)`, async () => {
      await cutOff('KeyUpdate flood', { version: 'TLSv1.3' }, (c) => {
        const r = c.seal(22, Buffer.from([24, 0, 0, 1, 1]));
        c.nextSendKey();
        return r;
      });
    });
  }

  test(`${FLOOD} TLS 1.2 warning alerts are cut off after ${NON_DATA_BURST} (${TURN_READS} per turn) with unexpected_message (${mode} mode)`, async () => {
    await cutOff('warning alerts', { version: 'TLSv1.2' }, (c) => c.seal(21, Buffer.from([1, ALERT.user_canceled])));
  });

  if (mode === 'user') {
    test(`empty records (${FLOOD / 10} TLS 1.3 ones with the most padding, ${FLOOD} bare TLS 1.2 ones) are cut off after ${NON_DATA_BURST} with unexpected_message (user mode)`, async () => {
      await cutOff('padded empty TLS 1.3 records', { version: 'TLSv1.3' }, (c) => c.seal(23, Buffer.alloc(0), 1 << 14), FLOOD / 10);
      await cutOff('empty TLS 1.2 records', { version: 'TLSv1.2' }, (c) => c.seal(23, Buffer.alloc(0)));
    });
  } else {
    // kTLS's recvmsg skips a run of empty data records itself (decrypting each, as it would data) and reports at
    // most one: the allowance cannot count them, and they cost what the same bytes of data would.
    test(`empty records (${FLOOD / 10} TLS 1.3 ones with the most padding) are skipped by the kernel like data: others are served and the connection still relays (kernel mode)`, async () => {
      const c = await flood('padded empty TLS 1.3 records', { version: 'TLSv1.3' }, (k) => k.seal(23, Buffer.alloc(0), 1 << 14), FLOOD / 10);
      c.send(c.seal(23, Buffer.from('after the flood')));
      assert.equal((await c.readData(15, 60_000)).toString(), 'after the flood');
    });
  }
}
