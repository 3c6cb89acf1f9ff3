/**
 * How the server picks an agent for a dial: the strategies of `--proxy-strategies`, tried in
 * order; the first that finds an agent wins. Draining agents are used only when nothing else
 * matches.
 */
import type { AgentRegistry } from './agent-registry.js';
import { isDraining, type Backend } from './backend.js';
import { dialHost } from '../wire/agent-identifiers.js';

export const PROXY_STRATEGIES = ['destHost', 'default', 'defaultRoute'] as const;
export type ProxyStrategy = (typeof PROXY_STRATEGIES)[number];

export function parseProxyStrategies(list: string[]): ProxyStrategy[] {
  if (list.length === 0) throw new Error(`--proxy-strategies is empty: give one or more of ${PROXY_STRATEGIES.join(', ')}`);
  for (const s of list) {
    if (!(PROXY_STRATEGIES as readonly string[]).includes(s)) {
      throw new Error(`unknown proxy strategy "${s}": use ${PROXY_STRATEGIES.join(', ')}, comma-separated, in the order to try them`);
    }
  }
  return list as ProxyStrategy[];
}

function candidates(strategy: ProxyStrategy, registry: AgentRegistry, address: string): Backend[] {
  switch (strategy) {
    case 'destHost':
      return registry.withHost(dialHost(address));
    case 'default':
      return registry.primaries();
    case 'defaultRoute':
      return registry.primaries().filter((b) => b.identifiers.defaultRoute);
  }
}

function pick(backends: Backend[]): Backend | undefined {
  const ready = backends.filter((b) => !isDraining(b) && !b.mux.isClosed);
  const pool = ready.length > 0 ? ready : backends.filter((b) => !b.mux.isClosed);
  return pool[Math.floor(Math.random() * pool.length)];
}

export function chooseBackend(strategies: readonly ProxyStrategy[], registry: AgentRegistry, address: string): Backend | undefined {
  for (const strategy of strategies) {
    const backend = pick(candidates(strategy, registry, address));
    if (backend) return backend;
  }
  return undefined;
}
