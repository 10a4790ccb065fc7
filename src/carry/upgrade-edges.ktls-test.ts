// kTLS lane: upgrade edge cases with kernel-TLS connections.
import { upgradeEdgeScenarios } from './upgrade-edges.scenarios.js';

upgradeEdgeScenarios('kernel');
