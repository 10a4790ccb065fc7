// Native lane: the fd store with userspace-record connections (deposited, removed on every close, closed and counted after a crash).
import { fdStoreScenarios } from './fd-store.scenarios.js';

fdStoreScenarios('user', { chunk: 4096, everyMs: 20, streams: 0 });
