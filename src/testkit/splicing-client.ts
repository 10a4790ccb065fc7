// Test support: a client side that is a plain socket but splices like a kTLS one, to run the kernel-mode relay path without kTLS.
import { EAGAIN, EINTR, sys } from '../kernel/libc.js';
import type { ClientRead, ClientSide } from '../relay/client-side.js';

/** A client side that is a plain socket but splices like a kTLS one. */
export class PlainSplicingClient implements ClientSide {
  readonly splices = true;
  readonly pendingOutput = false;
  readonly carriesOutput = true;
  readonly bufferedInput = false;
  readonly inputPaused = false;
  constructor(readonly fd: number) {}
  read(buf: Buffer): ClientRead {
    const r = sys.recv(this.fd, buf, buf.length);
    if (r === -EAGAIN || r === -EINTR) return { kind: 'again' };
    if (r < 0) return { kind: 'fatal', reason: `errno ${-r}` };
    return r === 0 ? { kind: 'eof' } : { kind: 'data', n: r };
  }
  spliceIn(pipeW: number, len: number): number | 'control' | ClientRead {
    const r = sys.splice(this.fd, pipeW, len);
    if (r > 0) return r;
    if (r === 0) return { kind: 'eof' };
    if (r === -EAGAIN || r === -EINTR) return { kind: 'again' };
    return { kind: 'fatal', reason: `errno ${-r}` };
  }
  write(buf: Buffer, len: number): number {
    return sys.send(this.fd, buf, len);
  }
  closeNotify(): boolean {
    return true;
  }
  sendAlert(): void {}
  flush(): number {
    return 0;
  }
  wipe(): void {}
}
