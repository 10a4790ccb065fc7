// kTLS lane: `npm start` works out of the box and the default `--ktls auto` puts the session in the kernel.
import { npmStartScenario } from './npm-start.scenarios.js';

npmStartScenario('kernel');
