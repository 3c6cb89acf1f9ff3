/**
 * A CA bundle that lives in a ConfigMap (the tunnel CA's, published by the server), followed
 * by watch: when an operator adds or replaces CAs in it, the new bundle is used from the next
 * handshake. A change that holds no usable certificate is logged and ignored.
 */
import { X509Certificate } from 'node:crypto';
import { CoreV1Api, type V1ConfigMap } from '@kubernetes/client-node';
import { Subject, filter, firstValueFrom, map, timeout, type Subscription } from 'rxjs';
import type { CaBundleSource } from '../pki/tls-source.js';
import type { Logger } from '../observe/log.js';
import type { KubeConnection } from './kube-config.js';
import { listWatch } from './list-watch.js';

/** When to say that the bundle is still awaited. */
const WAITING_NOTICE_MS = 10_000;

export interface ConfigMapBundleOptions {
  kube: KubeConnection;
  namespace: string;
  name: string;
  key: string;
  /** How long to wait for the ConfigMap to hold a bundle at start. */
  timeoutMs?: number;
  log: Logger;
}

/** Waits for the ConfigMap to hold a usable bundle, then follows it. */
export async function configMapCaBundle(o: ConfigMapBundleOptions): Promise<CaBundleSource> {
  const core = o.kube.config.makeApiClient(CoreV1Api);
  const where = `ConfigMap ${o.namespace}/${o.name} (key ${o.key})`;
  const bundles = listWatch<V1ConfigMap>({
    config: o.kube.config,
    server: o.kube.server,
    path: `/api/v1/namespaces/${o.namespace}/configmaps`,
    resource: { resource: 'configmaps', group: '', namespace: o.namespace, name: o.name },
    fieldSelector: `metadata.name=${o.name}`,
    list: () => core.listNamespacedConfigMap({ namespace: o.namespace, fieldSelector: `metadata.name=${o.name}` }),
    log: o.log,
  }).pipe(
    filter((event) => event.type !== 'DELETED'),
    map((event) => event.object.data?.[o.key]),
    filter((pem): pem is string => {
      if (pem === undefined) return false;
      const problem = bundleProblem(pem);
      if (problem) o.log.warn('ignoring a CA bundle that is not usable; keeping the previous one', { source: where, reason: problem });
      return !problem;
    }),
  );
  const waitMs = o.timeoutMs ?? 5 * 60_000;
  const patience = setTimeout(() => {
    o.log.warn('waiting for the CA bundle: the ConfigMap does not exist yet or holds no bundle', { source: where, hint: 'the tunnel server publishes it when it starts with --cert-source=kube; check that it runs and that this identity may read it' });
  }, WAITING_NOTICE_MS);
  const first = firstValueFrom(bundles.pipe(timeout({
    first: waitMs,
    with: () => { throw new Error(`${where} holds no usable CA bundle after ${Math.round(waitMs / 1000)} s: is the tunnel server running, and may this identity read it?`); },
  }))).finally(() => clearTimeout(patience));
  let current = Buffer.from(await first);
  const changes = new Subject<Buffer>();
  const subscription: Subscription = bundles.subscribe((pem) => {
    const next = Buffer.from(pem);
    if (next.equals(current)) return;
    current = next;
    o.log.info('the CA bundle changed', { source: where });
    changes.next(next);
  });
  return {
    current: () => current,
    changes,
    close: () => {
      subscription.unsubscribe();
      changes.complete();
    },
  };
}

function bundleProblem(pem: string): string | undefined {
  const certs = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (certs.length === 0) return 'it holds no PEM certificate';
  for (const cert of certs) {
    try {
      new X509Certificate(cert);
    } catch (err) {
      return `a certificate in it does not parse: ${(err as Error).message}`;
    }
  }
  return undefined;
}
