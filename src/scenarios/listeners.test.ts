// Native lane: listeners (SNI, ALPN routes, client certificates, PROXY headers, backend pools) with the userspace record layer.
import { listenerScenarios } from './listeners.scenarios.js';

listenerScenarios('user');
