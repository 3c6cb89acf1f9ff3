/**
 * The flags with which server and agent take their certificates from the hub's CSR API.
 */
import { join } from 'node:path';
import { UsageError } from '../common/errors.js';
import { loadKube, runningInCluster, type KubeConnection } from '../kube/kube-config.js';
import { parseDuration } from './flags.js';

export const DEFAULT_SIGNER_DOMAIN = 'tunnel.tkestack.io';
export const DEFAULT_NAMESPACE = 'tunnel-system';
export const CERT_SOURCES = ['local', 'kube'] as const;

/** --cert-source, --namespace, --signer-domain, --cert-dir, --cert-lifetime, --csr-timeout. */
export function certificateFlags(role: 'server' | 'agent') {
  return {
    'cert-source': { type: 'string', default: 'local', metavar: CERT_SOURCES.join('|'), help: role === 'server'
      ? 'where the server\'s certificate comes from: local (the certificate flags, or the local PKI in --state-dir) or kube (requested from the hub\'s CSR API, approved and signed by this server, renewed while tunnels stay up)'
      : 'where the agent\'s certificate comes from: local (the certificate flags, or the local PKI in --state-dir) or kube (requested from the hub\'s CSR API with the bootstrap credential, renewed while the tunnel stays up)' },
    namespace: { type: 'string', metavar: 'NS', help: `the hub namespace of the tunnel CA and its bundle ConfigMap (default: the pod's namespace, or the kubeconfig context's, else ${DEFAULT_NAMESPACE})` },
    'signer-domain': { type: 'string', default: DEFAULT_SIGNER_DOMAIN, metavar: 'DOMAIN', help: 'the tunnel\'s signers are DOMAIN/server and DOMAIN/agent' },
    'cert-dir': { type: 'string', metavar: 'DIR', help: 'where a certificate from the CSR API is kept across restarts (default: <state-dir>/certs)' },
    'cert-lifetime': { type: 'string', default: '720h', metavar: 'DURATION', help: 'the lifetime to ask for (expirationSeconds; at least 10m); renewal comes at 70 to 90% of it' },
    'csr-timeout': { type: 'string', default: '15m', metavar: 'DURATION', help: 'how long one certificate request waits for its certificate before it is made again' },
  } as const;
}

export function parseCertSource(value: string): 'local' | 'kube' {
  if (!(CERT_SOURCES as readonly string[]).includes(value)) throw new UsageError(`--cert-source=${value} is not a source: give ${CERT_SOURCES.join(' or ')}`);
  return value as 'local' | 'kube';
}

/** A lifetime flag in whole seconds, at least the CSR API's minimum of 600 (or `min`). */
export function parseLifetime(flag: string, value: string, min = 600): number {
  const seconds = Math.round(parseDuration(flag, value) / 1000);
  if (seconds < min) throw new UsageError(`--${flag}=${value} is too short: give ${min >= 600 ? '10m' : `${min}s`} or more${min >= 600 ? ' (the CSR API\'s minimum)' : ''}`);
  return seconds;
}

/** The hub connection: --kubeconfig, or the pod's service account. */
export function hubConnection(kubeconfig: string | undefined, what: string): KubeConnection {
  if (kubeconfig) return loadKube({ kubeconfig });
  if (!runningInCluster()) throw new UsageError(`${what} needs the hub's API server: give --kubeconfig=FILE (or run in a pod with a service account)`);
  return loadKube({ inCluster: true });
}

export function namespaceOf(flag: string | undefined, kube: KubeConnection): string {
  return flag || kube.namespace || DEFAULT_NAMESPACE;
}

export function certDirOf(flag: string | undefined, stateDir: string): string {
  return flag || join(stateDir, 'certs');
}
