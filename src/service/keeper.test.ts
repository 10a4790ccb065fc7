// Native lane: `ironsocket keeper` with userspace-record connections (closed cleanly after the proxy is killed, the port kept).
import { keeperScenarios } from './keeper.scenarios.js';

keeperScenarios('user', { chunk: 4096, everyMs: 20, streams: 0 });
