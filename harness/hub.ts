/**
 * A hub cluster for the tunnel on one machine: the Kubernetes API double with what the
 * tunnel's manifests give it (the tunnel-system namespace, the server's service account, one
 * bootstrap service account per managed cluster, and least-privilege grants that mirror
 * k8s/hub's RBAC), plus kubeconfig files for each identity. Tests, the demo and the bench
 * start the real binaries against it.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startKubeApi, type KubeApiDouble, type KubeApiOptions, type PolicyRule } from './kube-api/index.js';

export const HUB_NAMESPACE = 'tunnel-system';
export const SERVER_ACCOUNT = 'tunnel-server';
export const SIGNER_DOMAIN = 'tunnel.tkestack.io';

export function agentAccount(cluster: string): string {
  return `tunnel-agent-${cluster}`;
}

export function serviceAccountUser(name: string, namespace = HUB_NAMESPACE): string {
  return `system:serviceaccount:${namespace}:${name}`;
}

/** What the tunnel server may do at the hub (k8s/hub/rbac.yaml grants the same). */
export const SERVER_RULES: PolicyRule[] = [
  { verbs: ['get', 'list', 'watch', 'create'], apiGroups: ['certificates.k8s.io'], resources: ['certificatesigningrequests'] },
  { verbs: ['update'], apiGroups: ['certificates.k8s.io'], resources: ['certificatesigningrequests/approval', 'certificatesigningrequests/status'] },
  { verbs: ['approve', 'sign'], apiGroups: ['certificates.k8s.io'], resources: ['signers'], resourceNames: [`${SIGNER_DOMAIN}/server`, `${SIGNER_DOMAIN}/agent`] },
  { verbs: ['create'], apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'] },
  { verbs: ['get', 'create', 'update', 'list', 'watch'], apiGroups: [''], resources: ['secrets', 'configmaps'], namespaces: [HUB_NAMESPACE] },
  { verbs: ['get', 'list', 'watch'], apiGroups: [''], resources: ['services'], namespaces: [HUB_NAMESPACE] },
  { verbs: ['get', 'list', 'create', 'update', 'delete'], apiGroups: ['coordination.k8s.io'], resources: ['leases'], namespaces: [HUB_NAMESPACE] },
];

/**
 * What a managed cluster's bootstrap account may do at the hub: request its certificate,
 * follow the CA bundle, and find the server from its Service (the nodes for a NodePort one).
 */
export const AGENT_RULES: PolicyRule[] = [
  { verbs: ['get', 'list', 'watch', 'create'], apiGroups: ['certificates.k8s.io'], resources: ['certificatesigningrequests'] },
  { verbs: ['get', 'list', 'watch'], apiGroups: [''], resources: ['configmaps'], namespaces: [HUB_NAMESPACE], resourceNames: ['tunnel-ca'] },
  { verbs: ['get', 'list', 'watch'], apiGroups: [''], resources: ['services'], namespaces: [HUB_NAMESPACE], resourceNames: [SERVER_ACCOUNT] },
  { verbs: ['list'], apiGroups: [''], resources: ['nodes'] },
];

export interface Hub {
  api: KubeApiDouble;
  /** The server's kubeconfig file (its service account's token). */
  serverKubeconfig: string;
  /** The bootstrap kubeconfig file of a cluster's agent (its hub service account's token). */
  agentKubeconfig(cluster: string): string;
  /** The bootstrap token itself, as a file. */
  agentTokenFile(cluster: string): string;
  /** The hub API server's CA, as a file. */
  caFile: string;
  close(): Promise<void>;
}

/** Starts the API double and registers the tunnel's identities; files go to `dir`. */
export async function startHub(dir: string, clusters: string[], options: KubeApiOptions = {}): Promise<Hub> {
  const api = await startKubeApi(options);
  mkdirSync(dir, { recursive: true });
  api.objects.put('', 'namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: HUB_NAMESPACE } });
  const token = (account: string) => {
    api.objects.put('', 'serviceaccounts', { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: account, namespace: HUB_NAMESPACE } });
    const value = `${account}-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
    api.addToken(value, { username: serviceAccountUser(account), groups: ['system:serviceaccounts', `system:serviceaccounts:${HUB_NAMESPACE}`] });
    return value;
  };
  const file = (name: string, text: string) => {
    const path = join(dir, name);
    writeFileSync(path, text, { mode: 0o600 });
    return path;
  };
  api.grant({ user: serviceAccountUser(SERVER_ACCOUNT) }, SERVER_RULES);
  const serverKubeconfig = file('server.kubeconfig', api.kubeconfig({ token: token(SERVER_ACCOUNT) }));
  const agents = new Map<string, { kubeconfig: string; tokenFile: string }>();
  for (const cluster of clusters) {
    const value = token(agentAccount(cluster));
    api.grant({ user: serviceAccountUser(agentAccount(cluster)) }, AGENT_RULES);
    agents.set(cluster, {
      kubeconfig: file(`agent-${cluster}.kubeconfig`, api.kubeconfig({ token: value }, { namespace: HUB_NAMESPACE })),
      tokenFile: file(`agent-${cluster}.token`, value),
    });
  }
  const agent = (cluster: string) => {
    const entry = agents.get(cluster);
    if (!entry) throw new Error(`the hub has no bootstrap account for cluster ${cluster}: give it to startHub`);
    return entry;
  };
  return {
    api,
    serverKubeconfig,
    agentKubeconfig: (cluster) => agent(cluster).kubeconfig,
    agentTokenFile: (cluster) => agent(cluster).tokenFile,
    caFile: file('hub-ca.crt', api.caPem),
    close: () => api.close(),
  };
}
