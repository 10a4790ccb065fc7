// After the handshake, each record-layer case gets the answer OpenSSL (and so HAProxy) gives: the alert, or going on; in both modes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { modeArgs, type Mode } from '../scenarios/real-clients.scenarios.js';
import type { ScriptOptions, ScriptedClient } from '../testkit/scripted-client.js';
import { scriptedProxy } from '../testkit/scripted-proxy.js';
import { ALERT } from './client-side.js';

const TLS13: ScriptOptions = { version: 'TLSv1.3' };
const TLS12: ScriptOptions = { version: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256' };
const KEY_UPDATE = (v: number) => Buffer.from([24, 0, 0, 1, v]);
/** A ClientHello body good enough to be recognised as one (renegotiation is refused before it is parsed). */
const HELLO_BODY = Buffer.concat([Buffer.from([3, 3]), Buffer.alloc(32, 7), Buffer.from([0, 0, 2, 0xc0, 0x2b, 1, 0])]);
const CLIENT_HELLO = Buffer.concat([Buffer.from([1, 0, 0, HELLO_BODY.length]), HELLO_BODY]);

export function conformanceScenarios(mode: Mode): void {
  const { client } = scriptedProxy(modeArgs(mode));

  /** Sends data and expects it back: the connection still relays. */
  const echoes = async (c: ScriptedClient, text: string) => {
    c.send(c.seal(23, Buffer.from(text)));
    assert.equal((await c.readData(text.length)).toString(), text);
  };

  /** Expects a fatal alert `desc` and then a clean end (a FIN, not a reset that could have destroyed the alert). */
  const fatal = async (c: ScriptedClient, desc: number, what: string) => {
    const got = await c.alert();
    assert.deepEqual(got.alert, [2, desc], `${what}: alert ${JSON.stringify(got)}`);
    assert.equal(await c.ended(5000), 'fin', `${what}: how the connection ended`);
  };

  test(`an empty TLS 1.3 alert record (0, 2, 5 or 30 bytes of padding) gets unexpected_message (${mode} mode)`, async () => {
    for (const padding of [0, 2, 5, 30]) {
      const c = await client(TLS13);
      await echoes(c, 'before');
      c.send(c.seal(21, Buffer.alloc(0), padding));
      await fatal(c, ALERT.unexpected_message, `padding ${padding}`);
    }
  });

  test(`a ChangeCipherSpec after the client's TLS 1.3 Finished gets ${mode === 'user' ? 'unexpected_message' : 'bad_record_mac (the kernel cannot tell it apart)'} (${mode} mode)`, async () => {
    const c = await client(TLS13);
    c.send(Buffer.from([20, 3, 3, 0, 1, 1]));
    await fatal(c, mode === 'user' ? ALERT.unexpected_message : ALERT.bad_record_mac, 'plaintext CCS');
    const d = await client(TLS13);
    d.send(d.seal(20, Buffer.from([1])));
    await fatal(d, ALERT.unexpected_message, 'protected CCS');
  });

  test(`a TLS 1.2 client whose Finished arrives as 16 one-byte records is served (${mode} mode)`, async () => {
    const c = await client({ ...TLS12, splitFinished: true });
    await echoes(c, 'after a fragmented Finished');
  });

  test(`TLS 1.2 renegotiation, whole or in fragments, gets a warning no_renegotiation and the connection goes on (${mode} mode)`, async () => {
    const c = await client(TLS12);
    await echoes(c, 'before');
    c.send(c.seal(22, CLIENT_HELLO));
    assert.deepEqual((await c.alert()).alert, [1, ALERT.no_renegotiation]);
    await echoes(c, 'after one attempt');
    c.send(Buffer.concat([c.seal(22, CLIENT_HELLO.subarray(0, 3)), c.seal(22, CLIENT_HELLO.subarray(3, 20)), c.seal(22, CLIENT_HELLO.subarray(20))]));
    assert.deepEqual((await c.alert()).alert, [1, ALERT.no_renegotiation]);
    await echoes(c, 'after a fragmented attempt');
  });

  test(`a KeyUpdate with request_update 2 or 255 gets illegal_parameter, one of 2 bytes decode_error (${mode} mode)`, async () => {
    for (const v of [2, 255]) {
      const c = await client(TLS13);
      c.send(c.seal(22, KEY_UPDATE(v)));
      await fatal(c, ALERT.illegal_parameter, `request_update ${v}`);
    }
    const c = await client(TLS13);
    c.send(c.seal(22, Buffer.from([24, 0, 0, 2, 0, 0])));
    await fatal(c, ALERT.decode_error, 'KeyUpdate of 2 bytes');
  });

  test(`a KeyUpdate split across records is reassembled${mode === 'kernel' ? ' (and ends the connection: this kernel cannot rekey)' : ''}; data between its fragments gets unexpected_message (${mode} mode)`, async () => {
    const c = await client(TLS13);
    await echoes(c, 'before');
    const ku = KEY_UPDATE(1);
    c.send(Buffer.concat([c.seal(22, ku.subarray(0, 1)), c.seal(22, ku.subarray(1, 3)), c.seal(22, ku.subarray(3))]));
    c.nextSendKey();
    if (mode === 'user') await echoes(c, 'under the new keys, both ways');
    else await fatal(c, ALERT.internal_error, 'KeyUpdate in kernel mode');
    const d = await client(TLS13);
    d.send(Buffer.concat([d.seal(22, ku.subarray(0, 2)), d.seal(23, Buffer.from('between')), d.seal(22, ku.subarray(2))]));
    await fatal(d, ALERT.unexpected_message, 'data inside a KeyUpdate');
  });

  test(`a record longer than 2^14 + 256 bytes gets record_overflow, read by the client before the close (${mode} mode)`, async () => {
    for (const opts of [TLS13, TLS12]) {
      const c = await client(opts);
      const len = (1 << 14) + 257;
      c.pauseReading(500);
      c.send(Buffer.concat([Buffer.from([23, 3, 3, len >> 8, len & 0xff]), Buffer.alloc(len, 1)]));
      await fatal(c, ALERT.record_overflow, opts.version);
    }
  });

  test(`a ChaCha20-Poly1305 record shorter than its tag (0 to 15 bytes) gets bad_record_mac (${mode} mode)`, async () => {
    for (const n of [0, 1, 15]) {
      const c = await client({ version: 'TLSv1.3', ciphers: 'TLS_CHACHA20_POLY1305_SHA256' });
      c.send(Buffer.concat([Buffer.from([23, 3, 3, 0, n]), Buffer.alloc(n, 9)]));
      await fatal(c, ALERT.bad_record_mac, `${n} bytes`);
    }
  });

  test(`empty application-data records (TLS 1.3 with and without padding, TLS 1.2) are skipped, not taken for the end of the stream (${mode} mode)`, async () => {
    for (const [opts, padding] of [
      [TLS13, 0],
      [TLS13, 100],
      [TLS12, 0],
    ] as const) {
      const c = await client(opts);
      await echoes(c, 'before');
      c.send(c.seal(23, Buffer.alloc(0), padding));
      assert.equal(await c.ended(300), undefined, `${opts.version} padding ${padding}: the empty record ended the connection`);
      await echoes(c, `after an empty record (${opts.version}, padding ${padding})`);
    }
  });

  test(`a TLS 1.3 record whose inner content type is 0 gets ${mode === 'user' ? 'unexpected_message' : 'bad_record_mac (the kernel cannot tell it apart)'} (${mode} mode)`, async () => {
    const c = await client(TLS13);
    c.send(c.seal(0, Buffer.alloc(0), 10));
    await fatal(c, mode === 'user' ? ALERT.unexpected_message : ALERT.bad_record_mac, 'inner type 0');
  });
}
