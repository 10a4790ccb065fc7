// kTLS lane: in-place upgrades carrying kernel-TLS connections across exec (the TLS state travels with the fd).
import { upgradeScenarios } from './upgrade.scenarios.js';

upgradeScenarios('kernel', { chunk: 1024, everyMs: 100 });
