/**
 * Who may dial through the frontends. A client's certificate (mTLS ports) or its absence
 * (unix sockets, whose file permissions decide who connects) is weighed per dial; a refusal
 * is a sentence for the client and the log.
 */
import { describePeer, type PeerIdentity } from '../transport/peer-identity.js';
import { isAgentCertificate } from './agent-identity.js';

/** Why `peer` may not dial `address`, or undefined when it may. */
export type ClientPolicy = (peer: PeerIdentity | undefined, address: string) => string | undefined;

/** Agents' certificates (O `agentOrganization`) open tunnels into their cluster only from the agent side: they may not dial. */
export function refuseAgentCertificates(agentOrganization: string): ClientPolicy {
  return (peer) => (isAgentCertificate(peer, agentOrganization)
    ? `the client certificate (${describePeer(peer)}) is an agent's, which may not dial through the tunnel server: use a client certificate (tunnel-pki issue --kind client)`
    : undefined);
}

/** The first refusal of `policies`, in order (e.g. the agent-certificate check, then the authorization file). */
export function allPolicies(...policies: Array<ClientPolicy | undefined>): ClientPolicy | undefined {
  const given = policies.filter((p): p is ClientPolicy => p !== undefined);
  if (given.length <= 1) return given[0];
  return (peer, address) => {
    for (const policy of given) {
      const refusal = policy(peer, address);
      if (refusal) return refusal;
    }
    return undefined;
  };
}

/** `policy`, calling `refused` for each refusal (for a metric). */
export function observedPolicy(policy: ClientPolicy | undefined, refused: () => void): ClientPolicy | undefined {
  if (!policy) return undefined;
  return (peer, address) => {
    const refusal = policy(peer, address);
    if (refusal) refused();
    return refusal;
  };
}
