// Native lane: `npm start` works out of the box (userspace records: this kernel has no kTLS).
import { npmStartScenario } from './npm-start.scenarios.js';

npmStartScenario('user');
