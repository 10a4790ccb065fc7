// kTLS lane: every kernel behaviour the relay depends on holds on this kernel (run on each lane kernel; prints the README table's row).
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { type KernelBehaviour, describeOutcome, measureKernelBehaviour } from '../testkit/kernel-behaviour.js';

let k: KernelBehaviour;
before(() => {
  k = measureKernelBehaviour();
  const row = [
    k.release,
    k.accepted['TLSv1.2'].join(','),
    k.accepted['TLSv1.3'].join(','),
    k.rekey ? 'yes' : 'no',
    k.spliceAtControl.map(describeOutcome).join(' → '),
    k.emptyData.map(describeOutcome).join(' → '),
    describeOutcome(k.emptyAlert),
    k.keyUpdate.map(describeOutcome).join(' → '),
    describeOutcome(k.badMac),
    describeOutcome(k.overlong),
  ];
  console.log(`kernel behaviour | ${row.join(' | ')} |`);
});

test('kTLS shows as the socket\'s upper-layer protocol "tls" (what an upgrade or a restart checks on every carried socket)', () => {
  assert.equal(k.ulp, 'tls');
});

test('splice gives the application data before a control record, then EINVAL at it; recvmsg then reads it with its type', () => {
  assert.deepEqual(k.spliceAtControl, [{ bytes: 3, type: undefined }, { error: 'EINVAL' }]);
  assert.deepEqual(k.controlByRecvmsg, { bytes: 2, type: 21 });
});

test('a KeyUpdate reads as a handshake record with its type', () => {
  assert.deepEqual(k.keyUpdate[0], { bytes: 5, type: 22 });
});

test('a record that fails authentication reads as EBADMSG, one over 2^14 + 256 bytes as EMSGSIZE', () => {
  assert.deepEqual(k.badMac, { error: 'EBADMSG' });
  assert.deepEqual(k.overlong, { error: 'EMSGSIZE' });
});

test("the peer's FIN reads as 0 bytes without a record type", () => {
  assert.deepEqual(k.eof, { bytes: 0, type: undefined });
});

test('an alert sent with TLS_SET_RECORD_TYPE and bytes spliced into the socket reach the peer as records it can open', () => {
  assert.equal(k.sendsControl, true);
  assert.equal(k.splicesOut, true);
});
