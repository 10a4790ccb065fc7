// Relay worker entry: the relay loop plus upgrades — moving connections to the upgrade bridge and taking them back.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { RelayLoop, portControl } from '../relay/loop.js';
import { FdStore } from '../service/fd-store.js';
import type { WorkerInit } from '../relay/protocol.js';
import { Link } from './link.js';
import { StoredPairs } from './stored-pairs.js';
import { migrate, reclaim } from './transfer.js';

const init = workerData as WorkerInit;
const loop = new RelayLoop(
  portControl(parentPort as MessagePort, init.wakeFd),
  init.idleTimeoutMs,
  init.fdStore ? (log) => new StoredPairs(FdStore.at(init.fdStore!), log) : undefined,
);

const progress = () => loop.send({ op: 'transfer-progress' });

loop.extend((msg) => {
  if (msg.op === 'migrate') {
    migrate(loop, new Link(msg.linkFd), msg.idleTimeoutMs, msg.bridgeReady, (r) => loop.send({ op: 'migrated', seq: msg.seq, ...r }), progress);
    return true;
  }
  if (msg.op === 'reclaim') {
    reclaim(loop, new Link(msg.linkFd), msg.max, (r) => loop.send({ op: 'reclaimed', seq: msg.seq, reclaimed: r }), progress);
    return true;
  }
  return false;
});

loop.send({ op: 'ready' });
loop.run();
