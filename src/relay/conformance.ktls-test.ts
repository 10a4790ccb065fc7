// kTLS lane: every record-layer case after the handshake gets OpenSSL's answer where the kernel lets us tell the cases apart.
import { conformanceScenarios } from './conformance.scenarios.js';

conformanceScenarios('kernel');
