// A loopback listener that runs the libssl handshake engine on each connection, feeding it whole records one at a time.
import net from 'node:net';
import { once } from 'node:events';
import koffi from 'koffi';
import type { LibsslHandshake, LibsslStep } from '../handshake/libssl.js';

/** The first error in this thread's OpenSSL error queue (0 when empty): every libssl path must leave it empty. */
export const opensslErrorQueued: () => number = (() => {
  const peek = koffi.load(null).func('unsigned long ERR_peek_error()');
  return () => Number(peek());
})();

/** A handshake test that loses its peer fails after this long instead of hanging. */
export const HANDSHAKE_TEST_LIMIT = { timeout: 20_000 };

export interface Served {
  hs: LibsslHandshake;
  last: LibsslStep;
  /** Bytes OpenSSL was given but left unread when the handshake ended. */
  unread: number;
  /** Records fed: each feed was exactly one record unless `finishedWithData`. */
  feeds: number;
  /** Everything the server sent, in order. */
  sent: Buffer[];
}

export interface ListenOptions {
  /** The client's Finished and the record after it are fed together (to see nothing past it is read). */
  finishedWithData?: boolean;
  /** Close the connection once the handshake is over (the client sees the end of the stream after our last flight). */
  endWhenDone?: boolean;
  /** Free each handshake once it is over (its outcome is still reported; `hs` is then unusable). */
  freeWhenDone?: boolean;
}

/**
 * Listens on 127.0.0.1; `accept` makes each connection's handshake. `opened` gets a closer for every socket and the
 * listener (for the test's afterEach). `next()` gives the outcomes in connection order.
 */
export async function listenLibssl(
  accept: () => LibsslHandshake,
  opened: Array<() => void>,
  o: ListenOptions = {},
): Promise<{ port: number; next: () => Promise<Served>; close: () => void }> {
  const results: Array<Promise<Served>> = [];
  const listener = net.createServer((sock) => {
    opened.push(() => sock.destroy());
    results.push(
      new Promise((resolve, reject) => {
        const hs = accept();
        let buf = Buffer.alloc(0);
        let feeds = 0;
        let seen23 = 0;
        const sent: Buffer[] = [];
        sock.on('error', reject);
        let over = false;
        sock.on('close', () => over || reject(new Error('the client closed the connection during the handshake')));
        sock.on('data', (d) => {
          if (over) return; // the handshake ended (and may be freed): later records are not ours to feed
          buf = Buffer.concat([buf, d]);
          for (;;) {
            if (buf.length < 5 || buf.length < 5 + buf.readUInt16BE(3)) return;
            let take = 5 + buf.readUInt16BE(3);
            if (buf[0] === 23 && ++seen23 === 1 && o.finishedWithData) {
              if (buf.length < take + 5 || buf.length < take + 5 + buf.readUInt16BE(take + 3)) return void seen23--; // wait for the next record too
              take += 5 + buf.readUInt16BE(take + 3);
            }
            const step = hs.feed(buf.subarray(0, take));
            buf = buf.subarray(take);
            feeds++;
            if (step.output.length) (sent.push(step.output), sock.write(step.output));
            if (step.state === 'continue') continue;
            over = true;
            resolve({ hs, last: step, unread: hs.unread, feeds, sent });
            if (o.freeWhenDone) hs.free();
            if (step.state === 'failed' || o.endWhenDone) sock.end();
            return;
          }
        });
      }),
    );
  });
  opened.push(() => listener.listening && listener.close());
  listener.listen(0, '127.0.0.1');
  await once(listener, 'listening');
  const port = (listener.address() as net.AddressInfo).port;
  let taken = 0;
  const next = async () => {
    while (results.length <= taken) await new Promise((r) => setTimeout(r, 5));
    return results[taken++]!;
  };
  return { port, next, close: () => listener.listening && listener.close() };
}
