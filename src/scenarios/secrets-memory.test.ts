// User mode: a closed session's secrets and record keys do not stay in the proxy's memory.
import { secretsMemoryScenarios } from './secrets-memory.scenarios.js';

secretsMemoryScenarios('user');
