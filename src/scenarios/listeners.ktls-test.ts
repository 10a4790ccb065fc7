// kTLS lane: the same listener scenarios with the kernel carrying every session.
import { listenerScenarios } from './listeners.scenarios.js';

listenerScenarios('kernel');
