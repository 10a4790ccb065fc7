// kTLS lane: the fault scenarios with kernel TLS carrying the connections (bytes spliced, never copied through JavaScript).
import { faultScenarios } from './faults.scenarios.js';

faultScenarios('kernel');
