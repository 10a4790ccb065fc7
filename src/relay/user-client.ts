// The client side of a relayed connection whose TLS records we protect ourselves (no kTLS): same contract as the kernel side.
import { EAGAIN, EINTR, errnoName, sys } from '../kernel/libc.js';
import { RecordError, RecordProtection, MAX_CIPHERTEXT, MAX_PLAINTEXT, MAX_RECORD } from '../record/aead.js';
import { tls13NextTrafficSecret, tls13TrafficKeys } from '../record/keys.js';
import type { CipherSuite } from '../record/suites.js';
import { ALERT, type ClientRead, type ClientSide } from './client-side.js';
import { PostHandshakeMessages, judgeRecord } from './post-handshake.js';

const HEADER = 5;
/**
 * Where this thread receives records. Each one is decrypted in place (`openInPlace`), so its
 * plaintext is a view into this buffer that the next receive, on any connection of this thread,
 * overwrites: whatever outlives one `read` call must be copied out of it first.
 */
const SHARED_INBOX = Buffer.allocUnsafeSlow(HEADER + MAX_CIPHERTEXT);
/** Where this thread seals outgoing data records; each is sent at once and only what the socket refuses is copied. */
const SHARED_OUTBOX = Buffer.allocUnsafeSlow(MAX_RECORD);
const KEY_UPDATE = 24;

export interface UserSessionState {
  suite: CipherSuite;
  version: 'TLSv1.2' | 'TLSv1.3';
  tx: { key: Buffer; iv: Buffer; seq: bigint };
  rx: { key: Buffer; iv: Buffer; seq: bigint };
  /** TLS 1.3 current traffic secrets (KeyUpdate derives the next ones from these). */
  secrets?: { client: Buffer; server: Buffer };
  /** Carried across an upgrade: a partly received record, undelivered plaintext, unsent ciphertext. */
  inbox?: Buffer;
  plain?: Buffer;
  out?: Buffer;
  /** A post-handshake message received in part (its first records). */
  handshake?: Uint8Array;
}

export class UserClient implements ClientSide {
  private readonly rx: RecordProtection;
  private readonly tx: RecordProtection;
  private readonly secrets?: { client: Buffer; server: Buffer };
  /**
   * A record received only in part, kept between reads; complete records are received into this
   * thread's shared buffer instead, so an idle connection holds no receive buffer.
   */
  private inbox: Buffer | undefined;
  private got = 0;
  private need = HEADER;
  /** Sealed bytes not yet accepted by the socket. */
  private out: Buffer | undefined;
  /** Decrypted data waiting to be copied out (a record can hold more than the caller's buffer). Always our own copy. */
  private plain: Buffer | undefined;
  /** A reply (KeyUpdate, warning alert) is in `out`: reading waits until it has gone (see inputPaused). */
  private replyQueued = false;
  private readonly handshake: PostHandshakeMessages;

  constructor(
    readonly fd: number,
    private readonly state: UserSessionState,
  ) {
    this.rx = new RecordProtection(state.suite, state.rx.key, state.rx.iv, state.rx.seq);
    try {
      this.tx = new RecordProtection(state.suite, state.tx.key, state.tx.iv, state.tx.seq);
    } catch (e) {
      this.rx.wipe();
      throw e;
    }
    this.secrets = state.secrets;
    this.handshake = new PostHandshakeMessages(state.version, state.handshake);
    for (const b of [state.rx.key, state.rx.iv, state.tx.key, state.tx.iv]) b.fill(0);
    if (state.inbox?.length) {
      this.inbox = Buffer.allocUnsafe(HEADER + MAX_CIPHERTEXT);
      state.inbox.copy(this.inbox);
      this.got = state.inbox.length;
      if (this.got >= HEADER) this.need = HEADER + this.inbox.readUInt16BE(3);
    }
    if (state.plain?.length) this.plain = Buffer.from(state.plain);
    if (state.out?.length) this.out = Buffer.from(state.out);
  }

  /** The whole record-layer state, as copies (the caller wipes them once carried). */
  snapshot(): Omit<UserSessionState, 'suite'> & { suite: string } {
    return {
      suite: this.state.suite.name,
      version: this.state.version,
      tx: this.tx.exportState(),
      rx: this.rx.exportState(),
      secrets: this.secrets ? { client: Buffer.from(this.secrets.client), server: Buffer.from(this.secrets.server) } : undefined,
      inbox: this.got && this.inbox ? Buffer.from(this.inbox.subarray(0, this.got)) : undefined,
      plain: this.plain ? Buffer.from(this.plain) : undefined,
      out: this.out ? Buffer.from(this.out) : undefined,
      handshake: this.handshake.snapshot(),
    };
  }

  readonly splices = false;

  get bufferedInput(): boolean {
    return this.plain !== undefined;
  }

  get pendingOutput(): boolean {
    return this.out !== undefined;
  }

  get inputPaused(): boolean {
    return this.replyQueued;
  }

  /** Pushes queued ciphertext; returns 0, -EAGAIN while the socket is full, or another -errno. */
  flush(): number {
    while (this.out) {
      const w = sys.send(this.fd, this.out, this.out.length);
      if (w === -EINTR) continue;
      if (w < 0) return w;
      this.out = w === this.out.length ? undefined : this.out.subarray(w);
    }
    this.replyQueued = false;
    return 0;
  }

  read(buf: Buffer): ClientRead {
    if (this.plain) return this.copyOut(buf);
    for (;;) {
      const box = this.inbox ?? SHARED_INBOX;
      const r = sys.recv(this.fd, box.subarray(this.got), this.need - this.got);
      if (r === -EAGAIN || r === -EINTR) {
        // Part of a record: it must outlive this call, so it moves out of the shared buffer.
        if (this.got > 0 && !this.inbox) {
          this.inbox = Buffer.allocUnsafe(HEADER + MAX_CIPHERTEXT);
          box.copy(this.inbox, 0, 0, this.got);
        }
        return { kind: 'again' };
      }
      if (r < 0) return { kind: 'fatal', reason: `read from client: ${errnoName(-r)}` };
      if (r === 0) return { kind: 'eof' };
      this.got += r;
      if (this.got < this.need) continue;
      if (this.need === HEADER) {
        const len = box.readUInt16BE(3);
        if (len > MAX_CIPHERTEXT) return { kind: 'fatal', alert: ALERT.record_overflow, reason: `record of ${len} bytes exceeds 2^14+256` };
        this.need = HEADER + len;
        if (len > 0) continue;
      }
      const total = this.need;
      this.got = 0;
      this.need = HEADER;
      this.inbox = undefined; // the next record starts in the shared buffer
      let opened;
      try {
        opened = this.rx.openInPlace(box.subarray(0, HEADER), box.subarray(HEADER, total));
      } catch (e) {
        if (e instanceof RecordError) return { kind: 'fatal', alert: e.alert, reason: e.message };
        throw e;
      }
      // Every record is reported, those without data too: each counts against the turn and the allowance.
      return this.dispatch(opened.type, opened.plaintext, buf);
    }
  }

  private copyOut(buf: Buffer): ClientRead {
    const p = this.plain!;
    const n = p.copy(buf, 0, 0, Math.min(p.length, buf.length));
    this.plain = n < p.length ? p.subarray(n) : undefined;
    return { kind: 'data', n };
  }

  /** `plaintext` is a view into the receive buffer (see SHARED_INBOX): used here, kept only as a copy. */
  private dispatch(type: number, plaintext: Buffer, buf: Buffer): ClientRead {
    const verdict = judgeRecord(type, plaintext, this.state.version, this.handshake);
    if (verdict === 'handshake') return this.handshakeMessages(plaintext);
    if (verdict !== 'data') return verdict;
    const n = plaintext.copy(buf, 0, 0, Math.min(plaintext.length, buf.length));
    if (n < plaintext.length) this.plain = Buffer.from(plaintext.subarray(n));
    return { kind: 'data', n };
  }

  /** Post-handshake messages: TLS 1.3 KeyUpdate, TLS 1.2 renegotiation attempts (refused with a warning). */
  private handshakeMessages(p: Buffer): ClientRead {
    const notes: string[] = [];
    for (const step of this.handshake.feed(p)) {
      if (step.kind === 'fatal') return step;
      if (step.kind === 'renegotiation') {
        this.reply(this.tx.seal(21, Buffer.from([1, ALERT.no_renegotiation])));
        notes.push('client asked to renegotiate: answered no_renegotiation (warning), going on');
        continue;
      }
      if (!this.secrets) return { kind: 'fatal', alert: ALERT.internal_error, reason: 'KeyUpdate received but traffic secrets were not kept' };
      this.rekey('client');
      if (step.requested) {
        // update_requested: answer with our own KeyUpdate (not requesting), sent under the old key, then switch.
        this.reply(this.tx.seal(22, Buffer.from([KEY_UPDATE, 0, 0, 1, 0])));
        this.rekey('server');
        notes.push('client KeyUpdate (update_requested): new receive key; answered with our KeyUpdate and a new send key');
      } else {
        notes.push('client KeyUpdate (update_not_requested): new receive key');
      }
    }
    return notes.length ? { kind: 'skip', note: notes.join('; ') } : { kind: 'skip' };
  }

  private rekey(which: 'client' | 'server'): void {
    const s = this.secrets!;
    const next = tls13NextTrafficSecret(this.state.suite, s[which]);
    s[which].fill(0);
    s[which] = next;
    const keys = tls13TrafficKeys(this.state.suite, next);
    (which === 'client' ? this.rx : this.tx).rekey(keys.key, keys.iv);
    keys.key.fill(0);
    keys.iv.fill(0);
  }

  private queue(rec: Buffer): void {
    this.out = this.out ? Buffer.concat([this.out, rec]) : rec;
  }

  /** Queues a reply and tries to send it; while any of it waits, reading pauses (one reply queued at most). */
  private reply(rec: Buffer): void {
    this.queue(rec);
    this.replyQueued = true;
    this.flush();
  }

  write(buf: Buffer, len: number): number {
    const f = this.flush();
    if (f < 0) return f;
    let taken = 0;
    while (taken < len && !this.out) {
      const n = Math.min(MAX_PLAINTEXT, len - taken);
      const recordLen = this.tx.sealInto(23, buf.subarray(taken, taken + n), SHARED_OUTBOX);
      taken += n;
      const r = this.sendOutbox(recordLen);
      if (r < 0 && r !== -EAGAIN) return r;
    }
    return taken;
  }

  /** Sends the record just sealed into SHARED_OUTBOX (nothing else queued); what the socket does not take now becomes `out`. */
  private sendOutbox(len: number): number {
    let sent = 0;
    while (sent < len) {
      const w = sys.send(this.fd, sent === 0 ? SHARED_OUTBOX : SHARED_OUTBOX.subarray(sent), len - sent);
      if (w === -EINTR) continue;
      if (w < 0) {
        this.out = Buffer.from(SHARED_OUTBOX.subarray(sent, len));
        return w;
      }
      sent += w;
    }
    return 0;
  }

  /** Sealed records not yet sent are part of the carried state (snapshot().out). */
  readonly carriesOutput = true;

  closeNotify(): boolean {
    this.queue(this.tx.seal(21, Buffer.from([1, ALERT.close_notify])));
    return this.flush() === 0;
  }

  sendAlert(desc: number): void {
    this.queue(this.tx.seal(21, Buffer.from([2, desc])));
    this.flush();
  }

  wipe(): void {
    this.rx.wipe();
    this.tx.wipe();
    this.secrets?.client.fill(0);
    this.secrets?.server.fill(0);
  }
}
