// Native lane: the same endings with the userspace record layer carrying the connections.
import { closeBehaviourScenarios } from './close-behaviour.scenarios.js';

closeBehaviourScenarios('user');
