#!/usr/bin/env node
/**
 * A managed cluster's insides for whole-system tests, as one process that can be started in
 * a network namespace of its own: a TCP echo target, and a Kubernetes API double holding a
 * few pods with a token that may list them. It writes the cluster's kubeconfig (as a client
 * inside the cluster sees it) to the given directory, prints one JSON line with the ports and
 * the kubeconfig's path, and runs until SIGTERM.
 *
 *   node managed-cluster.js DIR
 */
import net from 'node:net';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { startKubeApi } from './kube-api/index.js';

export const MANAGED_PODS = [
  { namespace: 'apps', name: 'web-0' },
  { namespace: 'apps', name: 'web-1' },
  { namespace: 'kube-system', name: 'coredns-0' },
];
export const MANAGED_TOKEN_USER = 'system:serviceaccount:kube-system:cluster-admin';

async function main(dir: string | undefined): Promise<void> {
  if (!dir) {
    process.stderr.write('usage: managed-cluster DIR\n');
    process.exit(2);
  }
  const echo = net.createServer((socket) => {
    socket.on('error', () => socket.destroy());
    socket.pipe(socket);
  });
  echo.listen(0, '127.0.0.1');
  await once(echo, 'listening');

  const api = await startKubeApi();
  for (const ns of new Set(MANAGED_PODS.map((p) => p.namespace))) api.objects.put('', 'namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
  for (const pod of MANAGED_PODS) {
    api.objects.put('', 'pods', { apiVersion: 'v1', kind: 'Pod', metadata: { name: pod.name, namespace: pod.namespace }, spec: { containers: [{ name: 'main', image: 'example/app:1' }] }, status: { phase: 'Running' } });
  }
  const token = `managed-${Math.random().toString(36).slice(2)}`;
  api.addToken(token, { username: MANAGED_TOKEN_USER });
  api.grant({ user: MANAGED_TOKEN_USER }, [{ verbs: ['get', 'list', 'watch'], apiGroups: [''], resources: ['pods', 'namespaces'] }]);
  const kubeconfig = join(dir, 'managed.kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig({ token }), { mode: 0o600 });

  process.stdout.write(`${JSON.stringify({ echoPort: (echo.address() as net.AddressInfo).port, apiPort: Number(new URL(api.url).port), kubeconfig })}\n`);
  process.on('SIGTERM', () => {
    echo.close();
    void api.close().then(() => process.exit(0));
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main(process.argv[2]);
