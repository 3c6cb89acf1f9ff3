/**
 * What both frontends call to open a tunneled connection: pick an agent by the proxy
 * strategies and dial through its stream.
 */
import { DialError, type DialOptions } from '../mux/dialing-mux.js';
import type { TunnelConnection } from '../mux/tunnel-connection.js';
import { ERR_NO_AGENT } from '../wire/protocol.js';
import type { AgentRegistry } from './agent-registry.js';
import { chooseBackend, type ProxyStrategy } from './proxy-strategies.js';

export type Dial = (address: string, options?: DialOptions) => Promise<TunnelConnection>;

export function dialRouter(registry: AgentRegistry, strategies: readonly ProxyStrategy[], timeoutMs: number): Dial {
  return async (address, options = {}) => {
    const backend = chooseBackend(strategies, registry, address);
    if (!backend) throw new DialError(ERR_NO_AGENT, address, 'refused');
    return backend.mux.dial(address, { timeoutMs, ...options });
  };
}
