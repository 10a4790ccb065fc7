// Native lane: record integrity failures in the userspace record layer.
import { recordIntegrityScenarios } from './record-integrity.scenarios.js';

recordIntegrityScenarios('user');
