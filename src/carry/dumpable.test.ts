// Native lane: the proxy, its upgraded image and its upgrade bridge are non-dumpable (userspace-record connections).
import { dumpableScenarios } from './dumpable.scenarios.js';

dumpableScenarios('user');
