// kTLS lane: how kernel-carried connections end, and that each leaves no fd behind.
import { closeBehaviourScenarios } from './close-behaviour.scenarios.js';

closeBehaviourScenarios('kernel');
