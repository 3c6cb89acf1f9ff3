/**
 * Which cluster an agent may serve, from its client certificate. By default an agent's
 * certificate says CN tunnel:agent:<cluster>, O tunnel:agents, and the agent may then
 * announce that cluster and nothing else: a certificate of cluster A registering for B, an
 * IP, a CIDR or the default route is refused at connect. Other certificate shapes can be
 * bound by their whole CN, or (as the reference does) not at all.
 */
import type { AgentIdentifiers } from '../wire/agent-identifiers.js';
import { describePeer, type PeerIdentity } from '../transport/peer-identity.js';
import { AGENT_COMMON_NAME_PREFIX, AGENT_ORGANIZATION, clusterOfAgent } from '../pki/identities.js';

export type AgentIdentityRule =
  /** Any certificate the CA signed may announce anything, as with the reference server. */
  | { kind: 'off' }
  /** The CN is a prefix and the cluster's name. */
  | { kind: 'cn-prefix'; prefix: string; organization: string }
  /** The CN is the cluster's name. */
  | { kind: 'cn'; organization: string };

export const DEFAULT_AGENT_IDENTITY = `cn-prefix:${AGENT_COMMON_NAME_PREFIX}`;

/** Parses --agent-identity (off, cn, cn-prefix:PREFIX) with --agent-organization. */
export function parseAgentIdentityRule(text: string, organization = AGENT_ORGANIZATION): AgentIdentityRule {
  if (text === 'off') return { kind: 'off' };
  if (text === 'cn') return { kind: 'cn', organization };
  if (text.startsWith('cn-prefix:') && text.length > 'cn-prefix:'.length) return { kind: 'cn-prefix', prefix: text.slice('cn-prefix:'.length), organization };
  throw new Error(`--agent-identity=${text} is not a rule: give cn-prefix:PREFIX (the default is ${DEFAULT_AGENT_IDENTITY}), cn, or off`);
}

/**
 * Why this agent may not register with these identifiers, or undefined when it may. The
 * reason names the certificate and the claim, and says what to do.
 */
export function agentRefusal(rule: AgentIdentityRule, peer: PeerIdentity | undefined, identifiers: AgentIdentifiers): string | undefined {
  if (rule.kind === 'off') return undefined;
  const shape = rule.kind === 'cn' ? 'the cluster\'s name' : `${rule.prefix}<cluster>`;
  const howTo = `issue the agent a certificate with CN ${shape}${rule.organization ? ` and O ${rule.organization}` : ''} (tunnel-pki issue --kind agent --name <cluster>), or start the server with --agent-identity=off to accept any certificate its CA signed`;
  if (!peer) return `the agent presented no client certificate; ${howTo}`;
  if (rule.organization && !peer.organization.includes(rule.organization)) {
    return `the agent's certificate (${describePeer(peer)}) is not an agent certificate: it lacks O ${rule.organization}; ${howTo}`;
  }
  const cluster = rule.kind === 'cn' ? peer.commonName : clusterOfAgent(peer.commonName, rule.prefix);
  if (!cluster) return `the agent's certificate (${describePeer(peer)}) names no cluster; ${howTo}`;
  const claims = [
    ...identifiers.host.filter((host) => host !== cluster).map((host) => `host=${host}`),
    ...identifiers.ipv4.map((ip) => `ipv4=${ip}`),
    ...identifiers.ipv6.map((ip) => `ipv6=${ip}`),
    ...identifiers.cidr.map((cidr) => `cidr=${cidr}`),
    ...(identifiers.defaultRoute ? ['default-route=true'] : []),
  ];
  if (claims.length > 0) {
    return `the agent's certificate (${describePeer(peer)}) lets it serve cluster "${cluster}" only, but it announced ${claims.join('&')}; start it with --cluster-name=${cluster}, or give it a certificate for what it should serve`;
  }
  if (identifiers.host.length === 0) return `the agent's certificate lets it serve cluster "${cluster}", but it announced no host; start it with --cluster-name=${cluster}`;
  return undefined;
}

/** Whether a frontend client's certificate is an agent's, which may not dial into clusters. */
export function isAgentCertificate(peer: PeerIdentity | undefined, organization = AGENT_ORGANIZATION): boolean {
  return organization !== '' && (peer?.organization.includes(organization) ?? false);
}

/** The cluster a verified certificate names under `rule`, or undefined (`off` binds none). */
export function clusterOfCertificate(rule: AgentIdentityRule, peer: PeerIdentity | undefined): string | undefined {
  if (!peer || rule.kind === 'off') return undefined;
  if (rule.organization && !peer.organization.includes(rule.organization)) return undefined;
  const cluster = rule.kind === 'cn' ? peer.commonName || undefined : clusterOfAgent(peer.commonName, rule.prefix);
  // Only a name can be a caller's cluster (it goes upstream in a header).
  return cluster !== undefined && CLUSTER_NAME.test(cluster) ? cluster : undefined;
}

/** What a cluster name may be: a DNS name (labels of letters, digits, '-', '_' and dots). */
const CLUSTER_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]{0,251}[A-Za-z0-9])?$/;
