// kTLS lane: a client flooding empty records is cut off exactly as in user mode.
import { floodScenarios } from './floods.scenarios.js';

floodScenarios('kernel');
