// What the upgrade bridge needs to serve new clients as this image does (listeners, ticket keys, limits), kept out of server.ts.
import { servableByBridge, type DoorOrder } from '../carry/door.js';
import type { ProxyConfig } from '../core/types.js';
import type { HandshakerInit } from '../edge/handshakers.js';
import { prepareAll } from '../edge/listener-setup.js';
import type { SessionTickets } from '../edge/session-tickets.js';

/**
 * The running configuration's listeners (keys read again from their files), a copy of the session ticket keys (the
 * caller wipes both) and the limits. Undefined for a transparent listener (the bridge has no capability to connect
 * from the client's address).
 */
export async function doorOrderOf(config: ProxyConfig, handshake: HandshakerInit, tickets: SessionTickets): Promise<DoorOrder | undefined> {
  if (!servableByBridge(config.listeners)) return undefined;
  const listeners = await prepareAll(config, handshake.tlsBase);
  return {
    handshake: {
      ...handshake,
      listeners,
      handshakeTimeoutMs: config.handshakeTimeoutMs,
      backendConnectTimeoutMs: config.backendConnectTimeoutMs,
      backendRetryMs: config.backendRetryMs,
      inlinePoll: false,
    },
    tickets: tickets.detached(),
    limits: {
      maxConnections: config.maxConnections,
      maxConnectionsPerSource: config.maxConnectionsPerSource,
      maxHandshakesPerSource: config.maxHandshakesPerSource,
    },
  };
}
