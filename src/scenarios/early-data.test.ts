// Native lane: 0-RTT early data refused by a proxy carrying sessions with the userspace record layer.
import { earlyDataScenarios } from './early-data.scenarios.js';

earlyDataScenarios('user');
