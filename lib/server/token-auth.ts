/**
 * Agents authenticated by a service-account token, as the reference server does it
 * (`--agent-namespace`, `--agent-service-account`, `--authentication-audience`): the agent
 * sends `authorization: Bearer <token>`, the server asks the hub's API server (TokenReview)
 * who the token belongs to, and admits the agent only if it is the expected service account.
 * The account may name the cluster (`tunnel-agent-{cluster}`), so that the token of one
 * cluster's agent cannot register another cluster.
 */
import { AuthenticationV1Api } from '@kubernetes/client-node';
import { MD_AUTHORIZATION } from '../wire/protocol.js';
import type { AgentIdentifiers } from '../wire/agent-identifiers.js';
import type { Metadata } from '../transport/grpc-metadata.js';
import { kubeCall } from '../kube/api-errors.js';
import type { KubeConnection } from '../kube/kube-config.js';

export interface TokenAuthOptions {
  kube: KubeConnection;
  namespace: string;
  /** The service account's name; `{cluster}` stands for the cluster the agent announces. */
  serviceAccount: string;
  audience: string;
}

/** Why the agent may not connect, or undefined; rejects when the API server cannot be asked. */
export type AgentAuthenticator = (metadata: Metadata, identifiers: AgentIdentifiers) => Promise<string | undefined>;

export function tokenReviewer(o: TokenAuthOptions): AgentAuthenticator {
  const api = o.kube.config.makeApiClient(AuthenticationV1Api);
  return async (metadata, identifiers) => {
    const values = metadata.get(MD_AUTHORIZATION);
    if (values.length !== 1) return `expected one ${MD_AUTHORIZATION} header with a bearer token, got ${values.length}: start the agent with --service-account-token-path`;
    const match = /^Bearer (\S+)$/.exec(String(values[0]));
    if (!match) return `the ${MD_AUTHORIZATION} header is not "Bearer <token>"`;
    const review = await kubeCall({ verb: 'create', resource: 'tokenreviews', group: 'authentication.k8s.io' }, o.kube.server,
      () => api.createTokenReview({ body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token: match[1], audiences: [o.audience] } } }));
    const status = review.status;
    if (status?.error) return `the agent's token was not accepted: ${status.error}`;
    if (!status?.authenticated) return 'the agent\'s token was not accepted by the API server';
    const cluster = identifiers.host[0] ?? '';
    if (o.serviceAccount.includes('{cluster}') && (identifiers.host.length !== 1 || !cluster)) {
      return 'an agent authenticated by token must announce exactly one cluster (host=...)';
    }
    const expected = `system:serviceaccount:${o.namespace}:${o.serviceAccount.replaceAll('{cluster}', cluster)}`;
    const user = status.user?.username ?? '';
    if (user !== expected) return `the agent's token belongs to ${user || 'no user'}, not to ${expected}`;
    return undefined;
  };
}
