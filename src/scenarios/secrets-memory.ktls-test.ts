// kTLS lane: once the kernel has a session's keys, the proxy keeps no copy of its secrets while it relays.
import { secretsMemoryScenarios } from './secrets-memory.scenarios.js';

secretsMemoryScenarios('kernel');
