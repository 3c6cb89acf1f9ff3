/**
 * Agent identifiers: the URL query string an agent sends in its `agentidentifiers` metadata
 * (`host=c1&ipv4=10.0.0.1&default-route=true`). Keys may repeat; unknown keys are ignored,
 * as the reference server does for version skew.
 */

export interface AgentIdentifiers {
  host: string[];
  ipv4: string[];
  ipv6: string[];
  cidr: string[];
  defaultRoute: boolean;
}

export const KNOWN_IDENTIFIER_KEYS = ['host', 'ipv4', 'ipv6', 'cidr', 'default-route'] as const;

export function parseAgentIdentifiers(query: string): AgentIdentifiers {
  const params = new URLSearchParams(query);
  const ipv6 = params.getAll('ipv6').map((v) => v.replace(/^\[|\]$/g, ''));
  return {
    host: params.getAll('host'),
    ipv4: params.getAll('ipv4'),
    ipv6,
    cidr: params.getAll('cidr'),
    defaultRoute: /^(1|t|true)$/i.test(params.get('default-route') ?? ''),
  };
}

/** The addresses the destHost strategy matches against. */
export function hostKeys(ids: AgentIdentifiers): string[] {
  return [...ids.host, ...ids.ipv4, ...ids.ipv6];
}

/** Checks an identifier string as the reference agent does at startup; throws a clear error. */
export function validateAgentIdentifiers(query: string): void {
  for (const key of new URLSearchParams(query).keys()) {
    if (!(KNOWN_IDENTIFIER_KEYS as readonly string[]).includes(key)) {
      throw new Error(`unknown agent identifier type "${key}" in "${query}": use ${KNOWN_IDENTIFIER_KEYS.join(', ')}`);
    }
  }
}

/** The host part of a dial address: `host:port`, `[v6]:port` or a bare IPv6 literal. */
export function dialHost(address: string): string {
  const bracketed = /^\[([^\]]+)\](?::\d*)?$/.exec(address);
  if (bracketed) return bracketed[1];
  const colons = address.split(':').length - 1;
  if (colons === 1) return address.slice(0, address.lastIndexOf(':'));
  return address; // a bare name, or a bare IPv6 literal
}
