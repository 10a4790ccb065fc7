// kTLS lane: `ironsocket keeper` with kernel-TLS connections, which carry on after the proxy is killed with SIGKILL.
import { keeperScenarios } from './keeper.scenarios.js';

keeperScenarios('kernel', { chunk: 1024, everyMs: 100, streams: 10 });
