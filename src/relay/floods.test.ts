// User mode, two relay workers: a client flooding records without data is cut off and costs the others nothing.
import { floodScenarios } from './floods.scenarios.js';

floodScenarios('user');
