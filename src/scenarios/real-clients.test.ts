// Native lane: every suite through real clients with the userspace record layer, with --ktls off and with the default auto.
import { describe } from 'node:test';
import { realClientScenarios } from './real-clients.scenarios.js';

describe('--ktls off', () => realClientScenarios('user'));
describe('--ktls auto on a kernel without kTLS', () => realClientScenarios('user', 'auto'));
