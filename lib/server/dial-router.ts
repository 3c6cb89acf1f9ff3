/**
 * What both frontends call to open a tunneled connection: pick an agent by the proxy
 * strategies and dial through its stream, within the dial limits when there are any.
 */
import { DialError, type DialOptions } from '../mux/dialing-mux.js';
import type { TunnelConnection } from '../mux/tunnel-connection.js';
import { ERR_NO_AGENT } from '../wire/protocol.js';
import type { AgentRegistry } from './agent-registry.js';
import { chooseBackend, type ProxyStrategy } from './proxy-strategies.js';
import type { DialLimiter } from './limits.js';

export interface RouteOptions extends DialOptions {
  /** Who dials, as the limits count clients (see limits.ts clientKey). */
  client?: string;
  /** Which frontend the dial came on, for metrics and logs. */
  frontend?: string;
}

export type Dial = (address: string, options?: RouteOptions) => Promise<TunnelConnection>;

export function dialRouter(registry: AgentRegistry, strategies: readonly ProxyStrategy[], timeoutMs: number, limiter?: DialLimiter): Dial {
  return async (address, options = {}) => {
    // `client` goes on to the connection too (the admin endpoints list who opened it).
    const { frontend, ...dialOptions } = options;
    const client = options.client;
    const backend = chooseBackend(strategies, registry, address);
    if (!backend) throw new DialError(ERR_NO_AGENT, address, 'refused');
    if (!limiter) return backend.mux.dial(address, { timeoutMs, ...dialOptions });
    const admission = limiter.admit(address, backend, client ?? 'unnamed client', frontend ?? 'unknown');
    try {
      const conn = await backend.mux.dial(address, { timeoutMs, ...dialOptions });
      admission.opened(conn);
      return conn;
    } catch (err) {
      admission.failed();
      throw err;
    }
  };
}
