// Handshake worker entry: runs TLS handshakes (OpenSSL via node:tls) on its own thread and hands established connections back.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import tls from 'node:tls';
import { createLogger } from '../admin/log.js';
import { Poller } from '../kernel/poller.js';
import { keyBuffers } from '../relay/protocol.js';
import { serveConnection, type ConnectionContext } from './connection.js';
import type { FromHandshaker, HandshakerInit, ToHandshaker } from './handshakers.js';

const init = workerData as HandshakerInit;
const port = parentPort as MessagePort;
const poller = new Poller(init.inlinePoll === true);
const aborts = new Map<string, AbortController>();
const post = (m: FromHandshaker, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);
/** Counter increments not yet sent: they go with the next `established` or `gone` (see FromHandshaker). */
let counts: string[] = [];
const takeCounts = () => {
  const c = counts;
  counts = [];
  return c;
};

const ctx: ConnectionContext = {
  poller,
  logger: createLogger(init.logLevel),
  secureContext: tls.createSecureContext(init.tls),
  backend: init.backend,
  policy: init.policy,
  kernelSuites: new Set(init.kernelSuites),
  handshakeTimeoutMs: init.handshakeTimeoutMs,
  backendConnectTimeoutMs: init.backendConnectTimeoutMs,
  count: (name) => counts.push(name),
  signalFor: (id) => aborts.get(id)?.signal,
  // The main thread learns of it with the fds, below.
  established: () => {},
  gone: (id) => post({ op: 'gone', id, counts: takeCounts() }),
  relay: {
    add(info, clientFd, backendFd, user) {
      // Keys move, they are not copied: the buffers become the main thread's.
      post({ op: 'established', info, clientFd, backendFd, user, counts: takeCounts() }, keyBuffers(user));
    },
  },
};
init.tls.key = undefined; // the secure context holds it now

post({ op: 'ready' });

port.on('message', (m: ToHandshaker) => {
  switch (m.op) {
    case 'conn': {
      aborts.set(m.id, new AbortController());
      void serveConnection(ctx, m.fd, m.id).finally(() => aborts.delete(m.id));
      break;
    }
    case 'abort':
      for (const a of aborts.values()) a.abort(m.reason);
      break;
    case 'stop':
      for (const a of aborts.values()) a.abort('shutting down');
      poller.close();
      port.close();
      break;
  }
});
