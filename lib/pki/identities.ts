/**
 * The certificate identities of the tunnel's roles: what a certificate's subject must say for
 * its holder to act as the server, as an agent of one cluster, or as a client. The local PKI
 * issues these, the certificate manager requests them, the approver holds requests to them,
 * and the server checks them on every connection.
 */

export const SERVER_COMMON_NAME = 'tunnel-server';
export const SERVER_ORGANIZATION = 'tunnel:server';
/** An agent's CN is this prefix and its cluster's name; its O is AGENT_ORGANIZATION. */
export const AGENT_COMMON_NAME_PREFIX = 'tunnel:agent:';
export const AGENT_ORGANIZATION = 'tunnel:agents';
export const CLIENT_COMMON_NAME = 'tunnel-client';
export const CLIENT_ORGANIZATION = 'tunnel:clients';

/** A DNS-1123 label: what a cluster name must be to appear in a certificate and a dial address. */
const CLUSTER_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

export function agentCommonName(cluster: string): string {
  return `${AGENT_COMMON_NAME_PREFIX}${cluster}`;
}

/** The cluster an agent identity names, or undefined when the CN is not one. */
export function clusterOfAgent(commonName: string, prefix = AGENT_COMMON_NAME_PREFIX): string | undefined {
  if (!commonName.startsWith(prefix)) return undefined;
  const cluster = commonName.slice(prefix.length);
  return cluster === '' ? undefined : cluster;
}

/** Throws an operator-facing error unless `name` can name a cluster. */
export function checkClusterName(name: string): string {
  if (!CLUSTER_NAME.test(name)) {
    throw new Error(`"${name}" is not a cluster name: use lower-case letters, digits and '-' (a DNS label, at most 63 characters), as Kubernetes names are`);
  }
  return name;
}
