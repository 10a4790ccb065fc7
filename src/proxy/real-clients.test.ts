// Native lane: every suite through real clients with the userspace record layer carrying the session.
import { realClientScenarios } from './real-clients.scenarios.js';

realClientScenarios('user');
