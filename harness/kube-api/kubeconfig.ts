/**
 * Kubeconfig YAML for the double: one cluster with the serving CA inlined, one user with a
 * bearer token or an inlined client certificate, one context. Strings are written in YAML's
 * double-quoted form (JSON's escaping), which every kubeconfig reader parses.
 */

export const CLUSTER_NAME = 'kube-api-double';
const CONTEXT_NAME = 'kube-api-double';

export type KubeconfigUser = { token: string } | { cert: string; key: string };

export interface KubeconfigOptions {
  server?: string;
  proxyUrl?: string;
  tlsServerName?: string;
  namespace?: string;
}

function quote(value: string): string {
  return JSON.stringify(value);
}

function base64(text: string): string {
  return Buffer.from(text).toString('base64');
}

export function renderKubeconfig(server: string, caPem: string, user: KubeconfigUser, options: KubeconfigOptions = {}): string {
  const clusterLines = [
    `    server: ${quote(options.server ?? server)}`,
    `    certificate-authority-data: ${quote(base64(caPem))}`,
    ...(options.proxyUrl ? [`    proxy-url: ${quote(options.proxyUrl)}`] : []),
    ...(options.tlsServerName ? [`    tls-server-name: ${quote(options.tlsServerName)}`] : []),
  ];
  const userLines = 'token' in user
    ? [`    token: ${quote(user.token)}`]
    : [`    client-certificate-data: ${quote(base64(user.cert))}`, `    client-key-data: ${quote(base64(user.key))}`];
  const userName = 'token' in user ? 'token-user' : 'certificate-user';
  return [
    'apiVersion: v1',
    'kind: Config',
    'clusters:',
    `- name: ${CLUSTER_NAME}`,
    '  cluster:',
    ...clusterLines,
    'users:',
    `- name: ${userName}`,
    '  user:',
    ...userLines,
    'contexts:',
    `- name: ${CONTEXT_NAME}`,
    '  context:',
    `    cluster: ${CLUSTER_NAME}`,
    `    user: ${userName}`,
    ...(options.namespace ? [`    namespace: ${quote(options.namespace)}`] : []),
    `current-context: ${CONTEXT_NAME}`,
    '',
  ].join('\n');
}
