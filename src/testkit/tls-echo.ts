// Test support: one request/echo round trip on an open TLS socket, shared by the listener, reload, systemd, fault and secrets tests.
import type tls from 'node:tls';

/** Sends `text` and resolves with what comes back once as many characters have arrived. */
export function echo(socket: tls.TLSSocket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (d: Buffer) => {
      got += d.toString();
      if (got.length >= text.length) {
        socket.off('data', onData);
        resolve(got);
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.write(text);
  });
}
