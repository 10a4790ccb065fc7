// kTLS lane: 0-RTT early data refused by a proxy whose sessions the kernel carries.
import { earlyDataScenarios } from './early-data.scenarios.js';

earlyDataScenarios('kernel');
