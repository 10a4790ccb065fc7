// Native lane: the fault scenarios with the userspace record layer carrying the connections.
import { faultScenarios } from './faults.scenarios.js';

faultScenarios('user');
