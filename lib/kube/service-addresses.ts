/**
 * Where a hub Service that exposes the tunnel server is reached from outside the hub, as
 * yurt-tunnel's agent finds its server from `x-tunnel-server-svc`: the annotation
 * `tunnel.tkestack.io/public-address` when set (any Service type; a ClusterIP Service behind
 * an ingress or a DNS name needs it), else a LoadBalancer's ingress addresses, else a
 * NodePort's node port on the nodes' addresses. The agent port is the Service port named
 * `agent`, else the one whose port or targetPort is 10262.
 */
import { CoreV1Api, type V1Service } from '@kubernetes/client-node';
import type { Observable } from 'rxjs';
import type { Logger } from '../observe/log.js';
import type { KubeConnection } from './kube-config.js';
import { listWatch, type WatchEvent } from './list-watch.js';
import { DEFAULT_AGENT_PORT } from '../wire/protocol.js';
import { joinHostPort, splitHostPort } from '../transport/host-port.js';

/** Comma-separated `host` or `host:port` entries, e.g. `tunnel.example.com` or `203.0.113.7:443`. */
export const PUBLIC_ADDRESS_ANNOTATION = 'tunnel.tkestack.io/public-address';
export const AGENT_PORT_NAME = 'agent';

export interface PublicAddress {
  host: string;
  port?: number;
}

/** The annotation's entries; the malformed ones are returned apart, for a warning. */
export function publicAddresses(svc: V1Service | undefined): { addresses: PublicAddress[]; malformed: string[] } {
  const value = svc?.metadata?.annotations?.[PUBLIC_ADDRESS_ANNOTATION] ?? '';
  const addresses: PublicAddress[] = [];
  const malformed: string[] = [];
  for (const entry of value.split(',').map((e) => e.trim()).filter(Boolean)) {
    const withPort = splitHostPort(entry);
    if (withPort) addresses.push(withPort);
    else if (/^[A-Za-z0-9.-]+$|^\[?[0-9a-fA-F:]+\]?$/.test(entry)) addresses.push({ host: entry.replace(/^\[|\]$/g, '') });
    else malformed.push(entry);
  }
  return { addresses, malformed };
}

/** The agent addresses (host:port) of the Service, or why it has none that an agent outside the hub can use. */
export function agentEndpoints(svc: V1Service, nodeAddresses: () => string[]): { addresses: string[] } | { problem: string } {
  const name = `${svc.metadata?.namespace}/${svc.metadata?.name}`;
  const ports = svc.spec?.ports ?? [];
  const port = ports.find((p) => p.name === AGENT_PORT_NAME) ?? ports.find((p) => p.port === DEFAULT_AGENT_PORT || p.targetPort === DEFAULT_AGENT_PORT) ?? (ports.length === 1 ? ports[0] : undefined);
  if (!port) return { problem: `Service ${name} has no port named "${AGENT_PORT_NAME}" (or with port ${DEFAULT_AGENT_PORT}): name the agent port "${AGENT_PORT_NAME}"` };
  const annotated = publicAddresses(svc);
  if (annotated.addresses.length > 0) return { addresses: annotated.addresses.map((a) => joinHostPort(a.host, a.port ?? port.port)) };
  const type = svc.spec?.type ?? 'ClusterIP';
  if (type === 'LoadBalancer') {
    const ingress = (svc.status?.loadBalancer?.ingress ?? []).map((i) => i.ip || i.hostname).filter((h): h is string => Boolean(h));
    if (ingress.length > 0) return { addresses: ingress.map((h) => joinHostPort(h, port.port)) };
    if (!port.nodePort) return { problem: `LoadBalancer Service ${name} has no ingress address yet (the load balancer is still being provisioned?), and no ${PUBLIC_ADDRESS_ANNOTATION} annotation` };
  }
  if (type === 'NodePort' || type === 'LoadBalancer') {
    if (!port.nodePort) return { problem: `Service ${name} has no node port on its agent port yet` };
    const nodes = nodeAddresses();
    if (nodes.length > 0) return { addresses: nodes.map((h) => joinHostPort(h, port.nodePort!)) };
    return { problem: `NodePort Service ${name}: no node addresses are known (the agent's hub account may not list nodes); set the ${PUBLIC_ADDRESS_ANNOTATION} annotation` };
  }
  return { problem: `${type} Service ${name} is not reachable from outside the hub by itself: set its ${PUBLIC_ADDRESS_ANNOTATION} annotation to the address agents reach (e.g. the ingress or DNS name in front of it)` };
}

/** One Service, by list+watch narrowed to its name (which RBAC resourceNames allow). */
export function watchService(kube: KubeConnection, service: { namespace: string; name: string }, log: Logger): Observable<WatchEvent<V1Service>> {
  const core = kube.config.makeApiClient(CoreV1Api);
  const fieldSelector = `metadata.name=${service.name}`;
  return listWatch<V1Service>({
    config: kube.config,
    server: kube.server,
    path: `/api/v1/namespaces/${service.namespace}/services`,
    resource: { resource: 'services', group: '', namespace: service.namespace, name: service.name },
    fieldSelector,
    list: () => core.listNamespacedService({ namespace: service.namespace, fieldSelector }),
    log,
  });
}
