// Closes a client socket without resetting it: FIN first, then discard what the client still sends, so a final alert is not lost to an RST.
import { EAGAIN, EINTR, SHUT_WR, sys } from '../kernel/libc.js';
import { EPOLLIN, type Poller } from '../kernel/poller.js';

const drain = Buffer.allocUnsafe(16 * 1024);

/**
 * Closing a socket whose receive queue still holds unread bytes makes the kernel send RST, and an RST
 * can destroy the alert we just sent before the client reads it. So: shut our side, read and drop
 * until the client's EOF (or `maxMs`), then close.
 */
export function lingeringClose(poller: Poller, fd: number, maxMs = 2000): void {
  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    poller.remove(fd);
    sys.close(fd);
  };
  const timer = setTimeout(finish, maxMs);
  sys.shutdown(fd, SHUT_WR);
  try {
    poller.add(fd, EPOLLIN, () => {
      for (;;) {
        const r = sys.recv(fd, drain, drain.length);
        if (r === -EAGAIN || r === -EINTR) return;
        if (r <= 0) return finish();
      }
    });
  } catch {
    finish(); // the poller is closed (the thread is stopping): no lingering
  }
}
