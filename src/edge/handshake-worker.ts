// Handshake worker entry: runs TLS handshakes (the node binary's OpenSSL, driven directly) on its own thread and hands established connections back.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { createLogger } from '../core/log.js';
import { openKeylogFile } from '../handshake/keylog-file.js';
import { sys } from '../kernel/libc.js';
import { Poller } from '../kernel/poller.js';
import { spareOnEventLoop } from '../kernel/spare-memory.js';
import { keyBuffers } from '../relay/protocol.js';
import { BackendPool } from './backend-pool.js';
import { serveConnection, type ConnectionContext, type ListenerRuntime } from './connection.js';
import { certSelector, wipeListeners, type HandshakeListener } from './listener-setup.js';
import { TicketKeyring } from '../handshake/ticket-keys.js';
import { Retiring } from './retiring.js';
import type { DeferredStart, FromHandshaker, ToHandshaker, WorkerStart } from './handshakers.js';
import type { CounterName } from '../core/counters.js';

/** The settings: at spawn, or (a worker booted ahead of them) the first message from the parent. */
async function startOf(data: WorkerStart | DeferredStart): Promise<WorkerStart> {
  if (!('deferred' in data)) return data;
  return new Promise((resolve) => parentPort!.once('message', (m: WorkerStart) => resolve(m)));
}

const init = await startOf(workerData as WorkerStart | DeferredStart);
const port = init.reply?.port ?? (parentPort as MessagePort);
const poller = new Poller(init.inlinePoll === true);
const aborts = new Map<string, AbortController>();
/** A burst's handshakes leave this thread's heap and malloc arenas at their high-water mark: given back once quiet. */
const spare = spareOnEventLoop();
const one = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
const post = (m: FromHandshaker, transfer: ArrayBuffer[] = []) => {
  port.postMessage(m, transfer);
  if (init.reply) sys.write(init.reply.wakeFd, one, 8);
};
/** Counter increments not yet sent: they go with the next `established` or `gone` (see FromHandshaker). */
let counts: CounterName[] = [];
const takeCounts = () => {
  const c = counts;
  counts = [];
  return c;
};

/** The process's session ticket keys, this worker's copy: every secure context issues and accepts tickets under them. */
const tickets = new TicketKeyring(init.tickets, () => counts.push('handshakes_ticket_unknown'));

const freeServers = (l: ListenerRuntime) => l.selector.contexts().forEach((server) => server.free());
/** A runtime a reload replaced frees its servers when its last connection ends (an SNI switch may still pick any of them). */
const retiring = new Retiring<ListenerRuntime>(freeServers);

/** Builds the runtime of each listener (its servers hold the keys from here on), then wipes the key buffers. */
function runtimes(ls: HandshakeListener[]): ListenerRuntime[] {
  const built: ListenerRuntime[] = [];
  try {
    for (const l of ls) built.push(runtime(l));
    return built;
  } catch (e) {
    built.forEach(freeServers);
    throw e;
  } finally {
    wipeListeners(ls);
  }
}

function runtime(l: HandshakeListener): ListenerRuntime {
  return {
    name: l.name,
    selector: certSelector(l, init.tlsBase, tickets),
    alpn: l.alpn,
    clientAuth: l.clientAuth,
    pool: new BackendPool(l.backends, init.backendRetryMs),
    routes: new Map(l.routes.map((r) => [r.alpn, new BackendPool(r.backends, init.backendRetryMs)])),
    proxyProtocol: l.proxyProtocol,
    transparent: l.transparent,
  };
}

let listeners = runtimes(init.listeners);
const keylogFile = init.keylogFile !== undefined ? openKeylogFile(init.keylogFile) : undefined;

const ctx: ConnectionContext = {
  poller,
  logger: createLogger(init.logLevel),
  worker: init.index,
  policy: init.policy,
  kernelSuites: new Set(init.kernelSuites),
  handshakeTimeoutMs: init.handshakeTimeoutMs,
  backendConnectTimeoutMs: init.backendConnectTimeoutMs,
  count: (name) => counts.push(name),
  signalFor: (id) => aborts.get(id)?.signal,
  // The main thread learns of it with the fds, below.
  established: () => {},
  gone: (id) => post({ op: 'gone', id, counts: takeCounts() }),
  keylog: keylogFile
    ? (line) => {
        try {
          keylogFile.write(line);
        } catch (e) {
          // A debugging aid must not fail the handshake it records.
          ctx.logger.warn({ err: (e as Error).message }, `cannot append to ${init.keylogFile}: ${(e as Error).message}`);
        }
      }
    : undefined,
  relay: {
    add(info, clientFd, backendFd, records) {
      // Keys move, they are not copied: the buffers become the main thread's.
      post({ op: 'established', info, clientFd, backendFd, records, counts: takeCounts() }, keyBuffers(records));
    },
  },
};

post({ op: 'ready' });

port.on('message', (m: ToHandshaker) => {
  switch (m.op) {
    case 'conn': {
      aborts.set(m.id, new AbortController());
      const listener = listeners[m.listener];
      if (!listener) throw new Error(`connection ${m.id} from unknown listener ${m.listener}`);
      const leave = retiring.enter(listener);
      void serveConnection(ctx, listener, m.fd, m.id).finally(() => {
        aborts.delete(m.id);
        leave();
        spare.note();
      });
      break;
    }
    case 'reload':
      // A listener's backend health marks start fresh: the reload may have changed its backends.
      Object.assign(init, m.timeouts);
      ctx.handshakeTimeoutMs = m.timeouts.handshakeTimeoutMs;
      ctx.backendConnectTimeoutMs = m.timeouts.backendConnectTimeoutMs;
      {
        const old = listeners;
        listeners = runtimes(m.listeners);
        retiring.retire(old);
      }
      break;
    case 'tickets':
      // Every context reads the keyring on each ticket: handshakes from now on use the new set.
      tickets.replace(m.set);
      break;
    case 'abort':
      for (const a of aborts.values()) a.abort(m.reason);
      break;
    case 'stop':
      for (const a of aborts.values()) a.abort('shutting down');
      retiring.retire(listeners);
      spare.stop();
      poller.close();
      keylogFile?.close();
      tickets.wipe();
      port.close();
      break;
  }
});
