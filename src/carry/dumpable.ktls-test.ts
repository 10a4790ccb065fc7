// kTLS lane: the proxy, its upgraded image and its upgrade bridge are non-dumpable (kernel-TLS connections).
import { dumpableScenarios } from './dumpable.scenarios.js';

dumpableScenarios('kernel');
