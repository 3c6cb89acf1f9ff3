/**
 * The tunnel server's address from its hub Service (`--server-service NS/NAME`), followed by
 * watch: a load balancer that gets its address late, a node port that changes, or an
 * annotation an operator edits reach the agent without a restart. See
 * lib/kube/service-addresses.ts for which address each Service type gives.
 */
import { CoreV1Api, type V1Node, type V1Service } from '@kubernetes/client-node';
import { Observable, concatMap, distinctUntilChanged, from, map } from 'rxjs';
import type { KubeConnection } from '../kube/kube-config.js';
import { kubeCall } from '../kube/api-errors.js';
import { agentEndpoints, watchService } from '../kube/service-addresses.js';
import type { Logger } from '../observe/log.js';

/** The addresses to dial, or (when there are none) why. */
export interface ServerAddresses {
  addresses: string[];
  problem?: string;
}

export interface ServerDiscoveryOptions {
  kube: KubeConnection;
  service: { namespace: string; name: string };
  log: Logger;
}

/** `NAMESPACE/NAME` of --server-service. */
export function parseServiceRef(value: string, flag: string): { namespace: string; name: string } {
  const [namespace, name, ...rest] = value.split('/');
  if (!namespace || !name || rest.length > 0) throw new Error(`--${flag}=${value} is not NAMESPACE/NAME (e.g. tunnel-system/tunnel-server)`);
  return { namespace, name };
}

export function discoverServer(o: ServerDiscoveryOptions): Observable<ServerAddresses> {
  const { kube, service } = o;
  const core = kube.config.makeApiClient(CoreV1Api);
  const where = `${service.namespace}/${service.name}`;
  const nodes = async (): Promise<string[]> => {
    try {
      const list = await kubeCall({ verb: 'list', resource: 'nodes', group: '' }, kube.server, () => core.listNode());
      // External addresses first: an agent outside the hub reaches those.
      const of = (type: string) => list.items.flatMap((n: V1Node) => (n.status?.addresses ?? []).filter((a) => a.type === type).map((a) => a.address));
      const external = of('ExternalIP');
      return external.length > 0 ? external : of('InternalIP');
    } catch (err) {
      o.log.warn('cannot list the hub\'s nodes for the NodePort Service of the tunnel server', { service: where, reason: (err as Error).message });
      return [];
    }
  };
  const addressesOf = async (svc: V1Service | undefined): Promise<ServerAddresses> => {
    if (!svc) return { addresses: [], problem: `the hub has no Service ${where} (--server-service)` };
    const needsNodes = (svc.spec?.type === 'NodePort' || svc.spec?.type === 'LoadBalancer') && !svc.status?.loadBalancer?.ingress?.length;
    const known = needsNodes ? await nodes() : [];
    const found = agentEndpoints(svc, () => known);
    return 'problem' in found ? { addresses: [], problem: found.problem } : { addresses: found.addresses };
  };
  return watchService(kube, service, o.log).pipe(
    concatMap((event) => from(addressesOf(event.type === 'DELETED' ? undefined : event.object))),
    distinctUntilChanged((a, b) => a.addresses.join() === b.addresses.join() && a.problem === b.problem),
    map((found) => {
      if (found.problem) o.log.warn('no address for the tunnel server from its Service', { service: where, problem: found.problem });
      else o.log.info('tunnel server address from its Service', { service: where, addresses: found.addresses.join(',') });
      return found;
    }),
  );
}
