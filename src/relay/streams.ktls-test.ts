// kTLS lane: bulk, concurrent and Finished-coalesced verified streams over kernel-carried sessions.
import { streamScenarios } from './streams.scenarios.js';

streamScenarios('kernel');
