/**
 * `--cert-source=kube` for the binaries: the role's TlsSource from the hub's CSR API, and for
 * the server the tunnel CA, the CA bundle and the approver and signer, composed from flags.
 */
import { map, of } from 'rxjs';
import { CertificateStore } from '../pki/certificate-store.js';
import { fileCaBundle, type CaBundleSource, type TlsSource } from '../pki/tls-source.js';
import {
  AGENT_ORGANIZATION, SERVER_COMMON_NAME, SERVER_ORGANIZATION, agentCommonName,
} from '../pki/identities.js';
import type { Logger } from '../observe/log.js';
import type { MetricsRegistry } from '../observe/metrics.js';
import { KubeCertificateManager } from '../kube/certificate-manager.js';
import { configMapCaBundle } from '../kube/ca-bundle.js';
import type { KubeConnection } from '../kube/kube-config.js';
import { CA_BUNDLE_KEY, loadOrCreateTunnelCa } from '../server/tunnel-ca.js';
import { CsrSigner } from '../server/csr-signer.js';
import { AGENT_USAGES, DEFAULT_MAX_EXPIRATION_SECONDS, SERVER_USAGES, type CsrPolicy } from '../server/csr-policy.js';
import { serverNames, type ServerNames, type ServerNamesOptions } from '../server/server-names.js';

/** The signer names of a domain: <domain>/server and <domain>/agent. */
export function signerNames(domain: string): { server: string; agent: string } {
  return { server: `${domain}/server`, agent: `${domain}/agent` };
}

export interface ServerKubeOptions {
  kube: KubeConnection;
  namespace: string;
  signers: { server: string; agent: string };
  caSecret: string;
  caBundleConfigMap: string;
  /** Run the approver and signer in this server. */
  approve: boolean;
  serverRequesters: string[];
  /** The agents' bootstrap identities; `{cluster}` stands for the cluster's name. */
  agentRequester: string;
  maxLifetimeSeconds: number;
  lifetimeSeconds: number;
  names: Omit<ServerNamesOptions, 'kube' | 'log'>;
  certDir: string;
  waitTimeoutMs?: number;
  metrics?: MetricsRegistry;
  log: Logger;
}

export interface KubeCertificates {
  tls: TlsSource;
  close(): void;
}

export async function serverCertificates(o: ServerKubeOptions): Promise<KubeCertificates> {
  const names$ = serverNames({ ...o.names, kube: o.kube, log: o.log });
  let latest: ServerNames = { dnsNames: [], ips: [] };
  const tracking = names$.subscribe((names) => { latest = names; });
  let signer: CsrSigner | undefined;
  if (o.approve) {
    const { ca } = await loadOrCreateTunnelCa({ kube: o.kube, namespace: o.namespace, secretName: o.caSecret, configMapName: o.caBundleConfigMap, log: o.log });
    const policy: CsrPolicy = {
      signers: o.signers,
      serverRequesters: o.serverRequesters,
      serverSans: () => latest,
      agentRequester: (cluster) => o.agentRequester.replaceAll('{cluster}', cluster),
      // Requests may ask for up to a year (or the signer's longest, if longer); what is
      // issued is capped at the signer's longest, however short.
      maxExpirationSeconds: Math.max(o.maxLifetimeSeconds, DEFAULT_MAX_EXPIRATION_SECONDS),
    };
    signer = new CsrSigner({ kube: o.kube, policy, ca, maxLifetimeSeconds: o.maxLifetimeSeconds, metrics: o.metrics, log: o.log });
    signer.start();
  }
  const trust = await configMapCaBundle({ kube: o.kube, namespace: o.namespace, name: o.caBundleConfigMap, key: CA_BUNDLE_KEY, log: o.log });
  const manager = await KubeCertificateManager.start({
    role: 'tunnel-server',
    kube: o.kube,
    template: names$.pipe(map((names) => ({
      commonName: SERVER_COMMON_NAME,
      organization: [SERVER_ORGANIZATION],
      ...names,
      usages: SERVER_USAGES,
      signerName: o.signers.server,
      expirationSeconds: o.lifetimeSeconds,
    }))),
    trust,
    store: new CertificateStore(o.certDir, 'tunnel-server'),
    csrPrefix: 'tunnel-server',
    waitTimeoutMs: o.waitTimeoutMs,
    metrics: o.metrics,
    log: o.log,
  });
  return {
    tls: manager,
    close: () => {
      manager.close();
      trust.close();
      signer?.stop();
      tracking.unsubscribe();
    },
  };
}

export interface AgentKubeOptions {
  kube: KubeConnection;
  cluster: string;
  signer: string;
  /** The CA bundle to trust the server by: a file, or the tunnel's ConfigMap in the hub. */
  trust: { file: string } | { namespace: string; configMap: string };
  lifetimeSeconds: number;
  certDir: string;
  waitTimeoutMs?: number;
  metrics?: MetricsRegistry;
  log: Logger;
}

export async function agentCertificates(o: AgentKubeOptions): Promise<KubeCertificates> {
  const trust: CaBundleSource = 'file' in o.trust
    ? await fileCaBundle(o.trust.file, `tunnel-agent of cluster ${o.cluster} (--ca-cert)`)
    : await configMapCaBundle({ kube: o.kube, namespace: o.trust.namespace, name: o.trust.configMap, key: CA_BUNDLE_KEY, log: o.log });
  const manager = await KubeCertificateManager.start({
    role: `tunnel-agent of cluster ${o.cluster}`,
    kube: o.kube,
    template: of({
      commonName: agentCommonName(o.cluster),
      organization: [AGENT_ORGANIZATION],
      dnsNames: [],
      ips: [],
      usages: AGENT_USAGES,
      signerName: o.signer,
      expirationSeconds: o.lifetimeSeconds,
    }),
    trust,
    store: new CertificateStore(o.certDir, `tunnel-agent-${o.cluster}`),
    csrPrefix: `tunnel-agent-${o.cluster}`,
    waitTimeoutMs: o.waitTimeoutMs,
    metrics: o.metrics,
    log: o.log,
  });
  return {
    tls: manager,
    close: () => {
      manager.close();
      trust.close();
    },
  };
}
