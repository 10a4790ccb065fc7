// Native lane: in-place upgrades carrying userspace-record connections across exec.
import { upgradeScenarios } from './upgrade.scenarios.js';

upgradeScenarios('user', { chunk: 4096, everyMs: 20 });
