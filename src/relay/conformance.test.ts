// User mode: every record-layer case after the handshake gets OpenSSL's answer.
import { conformanceScenarios } from './conformance.scenarios.js';

conformanceScenarios('user');
