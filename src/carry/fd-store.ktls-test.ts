// kTLS lane: the fd store with kernel-TLS connections, which survive kill -9 of the proxy and a restart from the store.
import { fdStoreScenarios } from './fd-store.scenarios.js';

fdStoreScenarios('kernel', { chunk: 1024, everyMs: 100, streams: 100 });
