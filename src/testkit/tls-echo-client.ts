// Test support: a TLS client to run inside a network namespace that sends rounds of a known byte pattern and checks the echo byte for byte.
// Usage: node tls-echo-client.js <host> <port> <bytes-per-round>
// Connects with node:tls (no certificate check), prints {"event":"connected","local":{...}}, then runs a round: sends the next
// <bytes-per-round> bytes of a seeded pattern (continuous across rounds) while checking every echoed byte, and prints
// {"event":"round",...}. Each line on stdin runs one more round; stdin's end closes the connection and prints {"event":"done",...}.
// Exits 1 (after an {"event":"error"} line) on a mismatch, an early close or any socket error; 2 on bad usage.
import readline from 'node:readline';
import tls from 'node:tls';

const [host, portText, roundText] = process.argv.slice(2);
const port = Number(portText);
const perRound = Number(roundText);
if (!host || !(port > 0) || !(perRound > 0)) {
  console.error('usage: tls-echo-client <host> <port> <bytes-per-round>');
  process.exit(2);
}

/** Byte `i` of the stream: a function of its offset only, so a lost, repeated or reordered chunk shows as a mismatch. */
function patternByte(i: number): number {
  let x = (i + 0x9e3779b9) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x45d9f3b) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x45d9f3b) >>> 0;
  return (x ^ (x >>> 16)) & 0xff;
}

function pattern(from: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  for (let k = 0; k < length; k++) b[k] = patternByte(from + k);
  return b;
}

function emit(event: string, extra: Record<string, unknown> = {}): void {
  console.log(JSON.stringify({ event, ...extra }));
}

let sent = 0;
let received = 0;
let rounds = 0;
let closing = false;
let roundDone: (() => void) | undefined;

function fail(message: string): never {
  emit('error', { message, sent, received, rounds });
  process.exit(1);
}

const socket = tls.connect({ host, port, rejectUnauthorized: false });
socket.on('error', (e) => fail(`socket error: ${e.message}`));
socket.on('close', () => {
  if (!closing) fail('the connection closed before the client ended it');
});
socket.on('data', (d: Buffer) => {
  for (let k = 0; k < d.length; k++) {
    if (received + k >= sent) fail(`${d.length - k} bytes echoed beyond the ${sent} sent`);
    if (d[k] !== patternByte(received + k)) fail(`echo mismatch at byte ${received + k}: got ${d[k]}, expected ${patternByte(received + k)}`);
  }
  received += d.length;
  if (received === sent) roundDone?.();
});

function round(): Promise<void> {
  return new Promise((resolve) => {
    const startedAt = Date.now();
    roundDone = () => {
      roundDone = undefined;
      rounds += 1;
      emit('round', { round: rounds, bytes: perRound, sent, received, ms: Date.now() - startedAt });
      resolve();
    };
    const chunk = pattern(sent, perRound);
    sent += perRound;
    socket.write(chunk);
  });
}

socket.once('secureConnect', async () => {
  emit('connected', { local: { host: socket.localAddress, port: socket.localPort }, protocol: socket.getProtocol() });
  await round();
  // Rounds run one at a time, in the order their lines arrived.
  let queue = Promise.resolve();
  const lines = readline.createInterface({ input: process.stdin });
  lines.on('line', () => {
    queue = queue.then(round);
  });
  lines.on('close', () => {
    void queue.then(() => {
      closing = true;
      emit('done', { sent, received, rounds });
      socket.end();
      socket.once('close', () => process.exit(0));
    });
  });
});
