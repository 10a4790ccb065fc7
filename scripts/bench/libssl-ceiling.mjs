// How fast a Node.js terminator can handshake when libssl is driven directly (libssl-server.mjs) rather than through
// node:tls, beside HAProxy and Iron Socket in the same run: the figures issue 20's design choice rests on.
// Usage: node scripts/bench/libssl-ceiling.mjs [SECONDS] [PEERS]   (defaults: 5, haproxy,libssl-direct,ironsocket)
// Run it with another node on PATH first (e.g. Node 24) to measure that node's OpenSSL: both Node peers use it.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { makeCert, tempDir } from '../../dist/testkit/proxy-process.js';
import { rpc, sleep } from './common.mjs';
import { findBin, killAllPeers, PEERS, startPeer } from './peers.mjs';
import { sTimeRun } from './s-time.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PROCS = 8;
const [seconds = '5', names = 'haproxy,libssl-direct,ironsocket'] = process.argv.slice(2);

const LIBSSL_DIRECT = {
  name: 'libssl-direct',
  bins: [process.execPath],
  command: ({ bin, port, backendPort, certFile, keyFile }) => [
    bin,
    [path.join(HERE, 'libssl-server.mjs'), certFile, keyFile, String(port), String(backendPort), String(os.cpus().length)],
    {},
  ],
};

const dir = tempDir('libssl-ceiling');
const { certFile, keyFile } = await makeCert(dir, 'ec');
const pem = path.join(dir, 'cert+key.pem');
fs.writeFileSync(pem, fs.readFileSync(certFile, 'utf8') + fs.readFileSync(keyFile, 'utf8'));
const backendChild = fork(path.join(HERE, 'backend.mjs'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
process.on('exit', () => {
  backendChild.kill('SIGKILL');
  killAllPeers();
  fs.rmSync(dir, { recursive: true, force: true });
});
const backendPort = await rpc(backendChild, 'backend')('port');

console.log(`node ${process.version} (OpenSSL ${process.versions.openssl}), ${os.cpus().length} CPUs, ${PROCS} × openssl s_time, ${seconds} s per row`);
const rows = {};
for (const name of names.split(',')) {
  const def = name === LIBSSL_DIRECT.name ? LIBSSL_DIRECT : PEERS.find((p) => p.name === name);
  if (!def) throw new Error(`no peer ${name}`);
  const peer = await startPeer(def, { bin: findBin(def), dir, backendPort, certFile, keyFile, pem, ktls: 'off' });
  await sleep(1000);
  const r = (rows[name] = {});
  for (const reuse of [false, true]) {
    await sTimeRun({ port: peer.port, reuse, procs: PROCS, seconds: 1, cpuMs: peer.cpuMs }); // warm-up
    const t = await sTimeRun({ port: peer.port, reuse, procs: PROCS, seconds: Number(seconds), cpuMs: peer.cpuMs });
    if (reuse ? t.full > PROCS : t.resumed > 0) throw new Error(`${name}: ${t.full} full, ${t.resumed} resumed handshakes`);
    r[reuse ? 'resumed' : 'full'] = t;
  }
  await peer.stop();
}
const base = rows.haproxy;
const ratio = (v, b) => (b ? ` (${(v / b).toFixed(2)}×)` : '');
for (const [name, r] of Object.entries(rows))
  console.log(
    `${name.padEnd(14)} full ${r.full.rate.toFixed(0).padStart(5)}/s${ratio(r.full.rate, base?.full.rate)}, ${r.full.cpuPerHandshake.toFixed(3)} CPU ms each` +
      ` | resumed ${r.resumed.rate.toFixed(0).padStart(5)}/s${ratio(r.resumed.rate, base?.resumed.rate)}, ${r.resumed.cpuPerHandshake.toFixed(3)} CPU ms each`,
  );
process.exit(0);
