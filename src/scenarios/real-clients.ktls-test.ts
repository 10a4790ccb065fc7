// kTLS lane: every suite through real clients with the kernel carrying the session.
import { realClientScenarios } from './real-clients.scenarios.js';

realClientScenarios('kernel');
