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
