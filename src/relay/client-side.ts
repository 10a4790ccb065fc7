// What the relay asks of a connection's client side, whoever protects its records (the kernel or us): reads, writes, alerts.

/** TLS alert descriptions the relay sends or recognises. */
export const ALERT = {
  close_notify: 0,
  unexpected_message: 10,
  bad_record_mac: 20,
  record_overflow: 22,
  illegal_parameter: 47,
  decode_error: 50,
  internal_error: 80,
  user_canceled: 90,
  no_renegotiation: 100,
} as const;

/** What one read from the client produced. */
export type ClientRead =
  | { kind: 'data'; n: number }
  | { kind: 'again' }
  | { kind: 'close_notify' }
  /** TCP FIN without close_notify. */
  | { kind: 'eof' }
  /**
   * A record without data for the backend, handled here (a KeyUpdate, an empty record, a warning alert, a
   * refused renegotiation); read again. Each one counts against the connection's allowance for such
   * records (relay/pair.ts). `note` is worth a (rate-limited) log line.
   */
  | { kind: 'skip'; note?: string }
  /** Fatal: `alert` (if any) should be sent before closing; `reason` is for the log; `clientAlert`: the client sent one. */
  | { kind: 'fatal'; alert?: number; reason: string; clientAlert?: true };

export interface ClientSide {
  readonly fd: number;
  read(buf: Buffer): ClientRead;
  /** Writes plaintext; returns bytes taken or -errno (-EAGAIN when full). */
  write(buf: Buffer, len: number): number;
  /** Sends (or queues) close_notify; returns false if some of it is still queued. */
  closeNotify(): boolean;
  sendAlert(desc: number): void;
  /** Whether bytes for the client (records, or a reply the socket would not take yet) are queued inside the client side. */
  readonly pendingOutput: boolean;
  /** Whether that queued output travels in the connection's carried state (else the next image must send it again). */
  readonly carriesOutput: boolean;
  /**
   * Reading waits until a queued reply (to a KeyUpdate, a renegotiation attempt) has gone out: a client
   * that sends without reading cannot make us queue replies without bound.
   */
  readonly inputPaused: boolean;
  /** Pushes queued bytes: 0 when done, -EAGAIN while full, another -errno on failure. */
  flush(): number;
  /** Zeroes any key material held. */
  wipe(): void;
  /** Whether bytes can move with splice (plaintext in the kernel: kTLS); userspace records cannot. */
  readonly splices: boolean;
  /** Plaintext already read from the socket but not yet handed out: no epoll event will announce it. */
  readonly bufferedInput: boolean;
  /**
   * Splices application data into a pipe: bytes moved, 'control' when a non-data record is next
   * (read() it), or what stopped it. Only when `splices`.
   */
  spliceIn?(pipeW: number, len: number): number | 'control' | ClientRead;
}

/** An alert record's plaintext (the same rules whoever decrypted it): close_notify, a warning to skip, or the end. */
export function alertRecord(p: Buffer, version: 'TLSv1.2' | 'TLSv1.3'): ClientRead {
  if (p.length !== 2) return { kind: 'fatal', alert: ALERT.decode_error, reason: `alert record of ${p.length} bytes (must be 2)` };
  const [level, desc] = [p[0]!, p[1]!];
  if (desc === ALERT.close_notify) return { kind: 'close_notify' };
  if (desc === ALERT.user_canceled || (level === 1 && version === 'TLSv1.2')) return { kind: 'skip', note: `client sent warning alert ${desc}` };
  return { kind: 'fatal', reason: `client sent ${level === 2 ? 'fatal' : 'warning'} alert ${desc}`, clientAlert: true };
}
