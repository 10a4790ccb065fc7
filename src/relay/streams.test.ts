// Native lane: bulk, concurrent and Finished-coalesced verified streams over the userspace record layer.
import { streamScenarios } from './streams.scenarios.js';

streamScenarios('user');
