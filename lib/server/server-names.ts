/**
 * The names the server's certificate must hold: those given on the command line, plus, when
 * the server is exposed by a Kubernetes Service, every address clients and agents reach it
 * by: the Service's DNS names, its cluster IPs and external IPs, its load balancer's
 * addresses, the public addresses of its annotation (tunnel.tkestack.io/public-address), and
 * for a NodePort (or LoadBalancer) Service the nodes' addresses. The Service
 * is followed by watch, so a new load balancer address renews the certificate.
 */
import { CoreV1Api, type V1Node, type V1Service } from '@kubernetes/client-node';
import { Observable, concat, concatMap, defer, distinctUntilChanged, from, of, shareReplay } from 'rxjs';
import { isIP } from 'node:net';
import { normalizeIp } from '../pki/certificates.js';
import type { Logger } from '../observe/log.js';
import { kubeCall, KubeApiError } from '../kube/api-errors.js';
import type { KubeConnection } from '../kube/kube-config.js';
import { PUBLIC_ADDRESS_ANNOTATION, publicAddresses, watchService } from '../kube/service-addresses.js';

export interface ServerNames {
  dnsNames: string[];
  ips: string[];
}

export interface ServerNamesOptions {
  static: ServerNames;
  kube?: KubeConnection;
  /** The Service that exposes the server. */
  service?: { namespace: string; name: string };
  clusterDomain?: string;
  log: Logger;
}

export function serverNames(o: ServerNamesOptions): Observable<ServerNames> {
  const fixed = normalize(o.static);
  if (!o.kube || !o.service) return of(fixed);
  const { kube, service } = o;
  const core = kube.config.makeApiClient(CoreV1Api);
  let nodesForbidden = false;
  const nodeAddresses = async (): Promise<string[]> => {
    if (nodesForbidden) return [];
    try {
      const nodes = await kubeCall({ verb: 'list', resource: 'nodes', group: '' }, kube.server, () => core.listNode());
      return nodes.items.flatMap((node: V1Node) => (node.status?.addresses ?? []).filter((a) => a.type === 'ExternalIP' || a.type === 'InternalIP').map((a) => a.address));
    } catch (err) {
      if (err instanceof KubeApiError && err.code === 403) nodesForbidden = true;
      o.log.warn('cannot list the nodes for the NodePort Service\'s addresses; the certificate holds the other names', { reason: (err as Error).message });
      return [];
    }
  };
  const namesOf = async (svc: V1Service | undefined): Promise<ServerNames> => {
    if (!svc) return fixed;
    const nodes = svc.spec?.type === 'NodePort' || svc.spec?.type === 'LoadBalancer' ? await nodeAddresses() : [];
    const annotated = publicAddresses(svc);
    if (annotated.malformed.length > 0) {
      o.log.warn(`the server's Service has ${PUBLIC_ADDRESS_ANNOTATION} entries that are not host or host:port; they are left out of the certificate`, { service: `${service.namespace}/${service.name}`, entries: annotated.malformed.join(',') });
    }
    const hosts = annotated.addresses.map((a) => a.host);
    return normalize({
      dnsNames: [...fixed.dnsNames, ...serviceDnsNames(service, o.clusterDomain ?? 'cluster.local'), ...(svc.status?.loadBalancer?.ingress ?? []).map((i) => i.hostname ?? ''), ...hosts.filter((h) => !isIP(h))],
      ips: [...fixed.ips, ...(svc.spec?.clusterIPs ?? [svc.spec?.clusterIP ?? '']), ...(svc.spec?.externalIPs ?? []), ...(svc.status?.loadBalancer?.ingress ?? []).map((i) => i.ip ?? ''), ...nodes, ...hosts.filter((h) => isIP(h))],
    });
  };
  // The first certificate waits for the Service as it is now, rather than starting without its names.
  const initial = defer(async () => {
    const svc = await kubeCall({ verb: 'get', resource: 'services', group: '', name: service.name, namespace: service.namespace }, kube.server,
      () => core.readNamespacedService({ name: service.name, namespace: service.namespace }))
      .catch((err: unknown) => {
        o.log.warn('cannot read the server\'s Service; its certificate holds the names of the flags until it can', { service: `${service.namespace}/${service.name}`, reason: (err as Error).message });
        return undefined;
      });
    return namesOf(svc);
  });
  const changes = watchService(kube, service, o.log).pipe(concatMap((event) => from(namesOf(event.type === 'DELETED' ? undefined : event.object))));
  return concat(initial, changes).pipe(
    distinctUntilChanged((a, b) => a.dnsNames.join() === b.dnsNames.join() && a.ips.join() === b.ips.join()),
    shareReplay({ bufferSize: 1, refCount: true }),
  );
}

/** name, name.ns, name.ns.svc and name.ns.svc.<cluster domain>. */
export function serviceDnsNames(service: { namespace: string; name: string }, clusterDomain: string): string[] {
  const base = `${service.name}.${service.namespace}`;
  return [service.name, base, `${base}.svc`, `${base}.svc.${clusterDomain}`];
}

function normalize(names: ServerNames): ServerNames {
  const ips = [...new Set(names.ips.filter((ip) => ip && ip !== 'None' && isIP(ip)).map(normalizeIp))];
  const dnsNames = [...new Set(names.dnsNames.filter(Boolean))];
  return { dnsNames: dnsNames.sort(), ips: ips.sort() };
}
