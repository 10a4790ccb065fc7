// Test support: a TCP echo server that prints each client's address as a JSON line, to see what address a backend is connected from.
// Usage: node recording-echo.js <host>; prints {"port":N} once listening, then {"remote":"...","remotePort":N} per connection.
import net from 'node:net';

const host = process.argv[2] ?? '0.0.0.0';
const server = net.createServer((s) => {
  console.log(JSON.stringify({ remote: s.remoteAddress, remotePort: s.remotePort }));
  s.on('error', () => s.destroy());
  s.pipe(s);
});
server.listen(0, host, () => console.log(JSON.stringify({ port: (server.address() as net.AddressInfo).port })));
process.on('SIGTERM', () => process.exit(0));
