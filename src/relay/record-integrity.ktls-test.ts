// kTLS lane: record integrity failures detected by the kernel (EBADMSG).
import { recordIntegrityScenarios } from './record-integrity.scenarios.js';

recordIntegrityScenarios('kernel');
