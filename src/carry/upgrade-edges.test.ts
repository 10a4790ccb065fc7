// Native lane: upgrade edge cases with userspace-record connections.
import { upgradeEdgeScenarios } from './upgrade-edges.scenarios.js';

upgradeEdgeScenarios('user');
