/**
 * The server's reverse-proxy flags: the port, the routes file, and the upstreams of the
 * built-in routes. The hub's API server defaults to what --kubeconfig names (its address and
 * CA, never its credentials: callers bring their own) or, in a pod, the in-cluster address
 * and the service account's CA.
 */
import { readFileSync } from 'node:fs';
import { UsageError } from '../common/errors.js';
import { loadKube, runningInCluster } from '../kube/kube-config.js';
import { routeTable, upstreamFrom, type RouteTable, type Upstream } from '../server/reverse-proxy/routes.js';
import { DEFAULT_REVERSE_PROXY_PORT } from '../wire/protocol.js';
import { parseOptionalPort } from './flags.js';
import type { ReverseProxyConfig } from '../server/tunnel-server.js';

export function reverseProxyFlags() {
  return {
    'reverse-proxy-port': { type: 'string', default: String(DEFAULT_REVERSE_PROXY_PORT), metavar: 'PORT', help: 'the reverse proxy to hub services for push mode, HTTPS with the server\'s certificate, client certificates verified (0 = any free port; "off" closes the port, agents\' push streams still use the routes)' },
    'reverse-proxy-routes': { type: 'string', metavar: 'FILE', help: 'JSON file of routes (path prefix -> upstream URL, upstream CA, who may use it) and per-cluster allow-lists; see the README' },
    'hub-apiserver': { type: 'string', metavar: 'URL', help: 'upstream of the / route, the hub\'s API server (default: the server of --kubeconfig, or in a pod https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)' },
    'hub-apiserver-ca': { type: 'string', metavar: 'PATH', help: 'CA of the hub API server\'s certificate, with --hub-apiserver (default: the CA of --kubeconfig, or the service account\'s ca.crt)' },
    'norm-upstream': { type: 'string', metavar: 'URL', help: 'upstream of the /v1/norm route (the route is off without it)' },
    'norm-ca-cert': { type: 'string', metavar: 'PATH', help: 'CA of the /v1/norm upstream\'s certificate (default: the system roots)' },
    'accept-push': { type: 'boolean', default: true, help: 'take agents\' push streams: connections from a managed cluster to the routes, carried in the agent\'s tunnel' },
  } as const;
}

interface ReverseProxyFlagValues {
  'reverse-proxy-port': string;
  'reverse-proxy-routes'?: string;
  'hub-apiserver'?: string;
  'hub-apiserver-ca'?: string;
  'norm-upstream'?: string;
  'norm-ca-cert'?: string;
  'accept-push': boolean;
  kubeconfig?: string;
}

/** The reverse proxy's configuration from the flags; UsageError names the flag at fault. */
export function reverseProxyConfig(flags: ReverseProxyFlagValues): ReverseProxyConfig {
  if (flags['hub-apiserver-ca'] && !flags['hub-apiserver']) throw new UsageError('--hub-apiserver-ca needs --hub-apiserver');
  if (flags['norm-ca-cert'] && !flags['norm-upstream']) throw new UsageError('--norm-ca-cert needs --norm-upstream');
  let routes: RouteTable;
  try {
    routes = routeTable({
      apiserver: hubApiUpstream(flags),
      norm: flags['norm-upstream'] ? upstreamFrom(flags['norm-upstream'], flags['norm-ca-cert'], '--norm-upstream') : undefined,
    }, flags['reverse-proxy-routes']);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError((err as Error).message);
  }
  return {
    port: parseOptionalPort('reverse-proxy-port', flags['reverse-proxy-port']),
    routes,
    acceptPush: flags['accept-push'],
  };
}

function hubApiUpstream(flags: ReverseProxyFlagValues): Upstream | undefined {
  if (flags['hub-apiserver']) return upstreamFrom(flags['hub-apiserver'], flags['hub-apiserver-ca'], '--hub-apiserver');
  if (!flags.kubeconfig && !runningInCluster()) return undefined;
  const kube = loadKube(flags.kubeconfig ? { kubeconfig: flags.kubeconfig } : { inCluster: true });
  const cluster = kube.config.getCurrentCluster()!;
  let ca: Buffer | undefined;
  if (cluster.caData) ca = Buffer.from(cluster.caData, 'base64');
  else if (cluster.caFile) {
    try {
      ca = readFileSync(cluster.caFile);
    } catch (err) {
      throw new UsageError(`cannot read the hub API server's CA ${cluster.caFile} (from ${kube.describe}): ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; give --hub-apiserver and --hub-apiserver-ca`);
    }
  }
  if (cluster.skipTLSVerify) throw new UsageError(`${kube.describe} skips TLS verification of the hub API server; the reverse proxy verifies its upstreams: give --hub-apiserver and --hub-apiserver-ca`);
  const upstream = upstreamFrom(kube.server, undefined, kube.describe);
  return { ...upstream, ca, serverName: cluster.tlsServerName };
}
