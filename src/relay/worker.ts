// Worker-thread entry of the data plane: runs the relay loop until the main thread stops it.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { RelayLoop } from './loop.js';
import type { WorkerInit } from './protocol.js';

const init = workerData as WorkerInit;
new RelayLoop(parentPort as MessagePort, init.wakeFd, init.idleTimeoutMs).run();
