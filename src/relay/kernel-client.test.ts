// The kernel-mode client side's close: a close_notify the socket will not take yet is kept, never dropped before the FIN.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EAGAIN, E } from '../kernel/libc.js';
import { RECORD_ALERT, type TlsRecordIo } from '../kernel/ktls.js';
import { KernelClient } from './kernel-client.js';

/** A record sender whose socket is full for the first `full` sends; records it took are kept in order. */
function fakeIo(full: number, fail?: number): { io: TlsRecordIo; sent: { type: number; payload: number[] }[] } {
  const sent: { type: number; payload: number[] }[] = [];
  let calls = 0;
  const io = {
    sendRecord(_fd: number, type: number, payload: Buffer): number {
      calls++;
      if (fail !== undefined) return -fail;
      if (calls <= full) return -EAGAIN;
      sent.push({ type, payload: [...payload] });
      return payload.length;
    },
  } as unknown as TlsRecordIo;
  return { io, sent };
}

test('a close_notify the full socket would not take stays owed until a flush sends it', () => {
  const { io, sent } = fakeIo(1);
  const c = new KernelClient(-1, io, 'TLSv1.3');
  assert.equal(c.closeNotify(), false);
  assert.equal(c.pendingOutput, true, 'the FIN must wait: the close_notify is still owed');
  assert.equal(c.flush(), 0);
  assert.equal(c.pendingOutput, false);
  assert.deepEqual(sent, [{ type: RECORD_ALERT, payload: [1, 0] }]);
});

test('a close_notify the socket takes at once leaves nothing owed', () => {
  const { io, sent } = fakeIo(0);
  const c = new KernelClient(-1, io, 'TLSv1.3');
  assert.equal(c.closeNotify(), true);
  assert.equal(c.pendingOutput, false);
  assert.equal(sent.length, 1);
});

test('a broken socket drops the close_notify instead of holding the connection open for it', () => {
  const { io } = fakeIo(0, E.EPIPE!);
  const c = new KernelClient(-1, io, 'TLSv1.3');
  assert.equal(c.closeNotify(), false);
  assert.equal(c.pendingOutput, false);
});

test('the kernel side says its owed output is not carried, so a carried close is sent again by the next image', () => {
  assert.equal(new KernelClient(-1, fakeIo(0).io, 'TLSv1.2').carriesOutput, false);
});
