/**
 * The CA the tunnel server signs its signers' certificates with, kept in a hub Secret, and
 * the bundle of CAs agents and clients trust, published in a ConfigMap beside it.
 *
 * - The Secret (`kubernetes.io/tls`: tls.crt, tls.key) is created with a new CA on the first
 *   start; every replica and every restart after that loads it. When two replicas start at
 *   once, the one whose create loses (409 AlreadyExists) reads the winner's.
 * - A Secret whose CA does not parse, or whose key is not the certificate's, is an error that
 *   names the Secret; it is never replaced, since certificates already issued chain to it.
 * - The ConfigMap's `ca.crt` holds the CA bundle: the signing CA is added when missing and
 *   other CAs in it are kept, so an operator rotating the CA can publish old and new together.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { CoreV1Api, type V1ConfigMap, type V1Secret } from '@kubernetes/client-node';
import { createCa, type CertificateAndKey } from '../pki/certificates.js';
import type { Logger } from '../observe/log.js';
import { KubeApiError, kubeCall } from '../kube/api-errors.js';
import type { KubeConnection } from '../kube/kube-config.js';

export const CA_BUNDLE_KEY = 'ca.crt';
const CA_COMMON_NAME = 'tke-anp-tunnel CA';

export interface TunnelCaOptions {
  kube: KubeConnection;
  namespace: string;
  secretName: string;
  configMapName: string;
  log: Logger;
}

export interface TunnelCa {
  ca: CertificateAndKey;
  /** The published bundle (PEM), which holds `ca`'s certificate. */
  bundle: string;
}

export async function loadOrCreateTunnelCa(o: TunnelCaOptions): Promise<TunnelCa> {
  const core = o.kube.config.makeApiClient(CoreV1Api);
  const where = `Secret ${o.namespace}/${o.secretName}`;
  const secretAction = (verb: string) => ({ verb, resource: 'secrets', group: '', name: o.secretName, namespace: o.namespace });
  let secret = await kubeCall(secretAction('get'), o.kube.server, () => core.readNamespacedSecret({ name: o.secretName, namespace: o.namespace }))
    .catch((err: KubeApiError) => { if (err.code === 404) return undefined; throw err; });
  if (!secret) {
    const fresh = createCa(CA_COMMON_NAME);
    const body: V1Secret = {
      apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/tls',
      metadata: { name: o.secretName, namespace: o.namespace, labels: { 'app.kubernetes.io/part-of': 'tke-anp-tunnel' } },
      data: { 'tls.crt': Buffer.from(fresh.certPem).toString('base64'), 'tls.key': Buffer.from(fresh.keyPem).toString('base64') },
    };
    secret = await kubeCall(secretAction('create'), o.kube.server, () => core.createNamespacedSecret({ namespace: o.namespace, body }))
      .then((created) => {
        o.log.info('created the tunnel CA', { secret: `${o.namespace}/${o.secretName}` });
        return created;
      }, async (err: KubeApiError) => {
        if (err.code !== 409) throw err;
        return kubeCall(secretAction('get'), o.kube.server, () => core.readNamespacedSecret({ name: o.secretName, namespace: o.namespace }));
      });
  }
  const ca = caOf(secret, where);
  const bundle = await publishBundle(core, o, ca.certPem);
  return { ca, bundle };
}

function caOf(secret: V1Secret, where: string): CertificateAndKey {
  const field = (key: string) => {
    const value = secret.data?.[key];
    if (!value) throw new Error(`${where} has no ${key}: it does not hold the tunnel CA; fix it, or delete it to have a new CA created (certificates issued by the old one must then be renewed)`);
    return Buffer.from(value, 'base64').toString('utf8');
  };
  const certPem = field('tls.crt');
  const keyPem = field('tls.key');
  try {
    const cert = new X509Certificate(certPem);
    if (!cert.ca) throw new Error('its certificate is not a CA certificate');
    if (!cert.checkPrivateKey(createPrivateKey(keyPem))) throw new Error('its key does not belong to its certificate');
  } catch (err) {
    throw new Error(`${where} does not hold a usable CA: ${(err as Error).message}; fix it, or delete it to have a new CA created (certificates issued by the old one must then be renewed)`, { cause: err });
  }
  return { certPem, keyPem };
}

/** Adds the CA's certificate to the bundle ConfigMap (creating it), keeping what else it holds. */
async function publishBundle(core: CoreV1Api, o: TunnelCaOptions, caPem: string): Promise<string> {
  const action = (verb: string) => ({ verb, resource: 'configmaps', group: '', name: o.configMapName, namespace: o.namespace });
  for (let attempt = 0; ; attempt++) {
    const existing = await kubeCall(action('get'), o.kube.server, () => core.readNamespacedConfigMap({ name: o.configMapName, namespace: o.namespace }))
      .catch((err: KubeApiError) => { if (err.code === 404) return undefined; throw err; });
    const current = existing?.data?.[CA_BUNDLE_KEY] ?? '';
    if (current.includes(caPem.trim())) return current;
    const bundle = `${current.trim() ? `${current.trim()}\n` : ''}${caPem.trim()}\n`;
    const body: V1ConfigMap = {
      apiVersion: 'v1', kind: 'ConfigMap',
      metadata: { ...(existing?.metadata ?? {}), name: o.configMapName, namespace: o.namespace, labels: { ...(existing?.metadata?.labels ?? {}), 'app.kubernetes.io/part-of': 'tke-anp-tunnel' } },
      data: { ...(existing?.data ?? {}), [CA_BUNDLE_KEY]: bundle },
    };
    try {
      if (existing) await kubeCall(action('update'), o.kube.server, () => core.replaceNamespacedConfigMap({ name: o.configMapName, namespace: o.namespace, body }));
      else await kubeCall(action('create'), o.kube.server, () => core.createNamespacedConfigMap({ namespace: o.namespace, body }));
      o.log.info('published the tunnel CA bundle', { configMap: `${o.namespace}/${o.configMapName}` });
      return bundle;
    } catch (err) {
      // Another replica changed it meanwhile: read it again.
      if (!(err instanceof KubeApiError && err.code === 409) || attempt >= 3) throw err;
    }
  }
}
