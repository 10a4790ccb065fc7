// Relay worker entry after exec: takes over the carried connections from the hand-off memfd, then runs the relay loop.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { sys } from '../kernel/libc.js';
import { RelayLoop } from '../relay/loop.js';
import type { RestoredSummary, WorkerInit } from '../relay/protocol.js';
import { checkPair, rejectPair, wipeCarried } from './restore.js';
import { decodeState, readStateMemfd } from './state.js';

const workerAt = Date.now();
const init = workerData as WorkerInit;
const loop = new RelayLoop(parentPort as MessagePort, init.wakeFd, init.idleTimeoutMs);
const buf = readStateMemfd(init.handoffFd!);
const state = decodeState(buf);
buf.fill(0);
const summary: RestoredSummary = {
  generation: state.generation,
  attempt: state.attempt,
  startedAt: state.startedAt,
  frozenAt: state.frozenAt,
  resumedAt: 0,
  breakdown: { freezeToExec: state.execAt - state.frozenAt, execToWorker: workerAt - state.execAt, restore: 0 },
  counters: state.counters,
  probe: state.probe,
  listeners: state.listeners,
  nextId: state.nextId,
  connections: [],
  failed: [],
};
for (const p of state.pairs) {
  const bad = checkPair(p);
  if (bad) {
    summary.failed.push({ id: p.pair.info.id, reason: bad });
    rejectPair(p, loop.io);
    continue;
  }
  sys.setCloexec(p.clientFd, true);
  sys.setCloexec(p.backendFd, true);
  loop.add(p.pair.info, p.clientFd, p.backendFd, p.user, p.pair);
  summary.connections.push(p.pair.info);
}
wipeCarried(state.pairs);
summary.resumedAt = Date.now();
summary.breakdown.restore = summary.resumedAt - workerAt;
loop.send({ op: 'restored', restored: summary });
loop.run();
