/**
 * @kubernetes/client-node through the tunnel: a KubeConfig whose requests (typed API calls,
 * watches, and the websockets of exec, attach and port-forward) reach a managed cluster's API
 * server over a tunneled connection. The address the kubeconfig names, e.g.
 * `https://10.0.0.1:6443`, is dialed as `CLUSTER:6443`, which the tunnel server routes to the
 * agent of that cluster; TLS runs end to end inside the tunnel with the kubeconfig's CA,
 * credentials and server name (its host, or its tls-server-name), so the API server's
 * certificate is verified as it would be without the tunnel.
 *
 * Also the kubeconfig that kubectl needs to go through the local CONNECT proxy
 * (local-proxy.ts): `proxy-url` pointing at it, the server as `https://CLUSTER:PORT`, and
 * `tls-server-name` keeping the certificate's name.
 */
import http from 'node:http';
import https from 'node:https';
import { isAbsolute, resolve as resolvePath, sep } from 'node:path';
import type { Duplex } from 'node:stream';
import { KubeConfig, dumpYaml, loadYaml, type Cluster, type RequestContext } from '@kubernetes/client-node';
import { DialError } from '../mux/dialing-mux.js';
import { joinHostPort, splitHostPort } from '../transport/host-port.js';
import { createTunnelDialer, tunnelProxyLabel, type TunnelDialerOptions } from './tunnel-dialer.js';
import { TunnelHttpAgent, TunnelHttpsAgent, type TunnelDial } from './tunnel-http-agent.js';

export { isLoopback, startLocalProxy, type LocalProxy, type LocalProxyOptions } from './local-proxy.js';

/** The `code` of a failed tunnel dial, kept by node-fetch's FetchError when it wraps one. */
export const TUNNEL_DIAL_FAILED = 'ETUNNELDIAL';

/** What the tunnel route can use as a cluster name: the host part of `CLUSTER:port`. */
const CLUSTER_NAME = /^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$/;

export interface TunnelKubeOptions {
  /**
   * The managed cluster's name at the tunnel (its agent's `--cluster-name`). Default: the
   * name of the current context's cluster in the kubeconfig.
   */
  cluster?: string;
  /** How to reach the tunnel server (as createTunnelDialer takes it), or a dial function. */
  dialer: TunnelDialerOptions | TunnelDial;
}

/** The tunnel could not open a connection to the managed cluster's API server. */
export class TunnelKubeDialError extends Error {
  override readonly name = 'TunnelKubeDialError';
  readonly code = TUNNEL_DIAL_FAILED;

  constructor(message: string, readonly cluster: string, readonly address: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * A KubeConfig whose connections go through the tunnel. Load it like any KubeConfig
 * (loadFromFile, loadFromOptions, ...), or build one from an existing configuration with
 * tunnelKubeConfig(). A `proxy-url` of the kubeconfig does not apply: the tunnel is the path.
 */
export class TunnelKubeConfig extends KubeConfig {
  private readonly dial: TunnelDial;
  private readonly proxyLabel?: string;
  private readonly cluster?: string;

  constructor(options: TunnelKubeOptions) {
    super();
    if (options.cluster !== undefined) checkClusterName(options.cluster, 'the cluster option');
    this.cluster = options.cluster;
    if (typeof options.dialer === 'function') {
      this.dial = options.dialer;
    } else {
      this.dial = createTunnelDialer(options.dialer);
      this.proxyLabel = tunnelProxyLabel(options.dialer);
    }
  }

  /** The cluster name requests are routed by at the tunnel server. */
  tunnelCluster(): string {
    if (this.cluster !== undefined) return this.cluster;
    const name = super.getCurrentCluster()?.name;
    if (name === undefined) throw new Error('the kubeconfig has no current cluster: set its current-context, or give the cluster option');
    return checkClusterName(name, `the kubeconfig's cluster name "${name}"`);
  }

  /** What the tunnel dials for the current cluster's API server: `CLUSTER:port`. */
  tunnelAddress(): string {
    const server = this.getCurrentCluster()?.server;
    if (!server) throw new Error('the kubeconfig has no current cluster with a server');
    return joinHostPort(this.tunnelCluster(), serverPort(new URL(server)));
  }

  /** The current cluster, without `proxy-url`: client-node would otherwise build a proxy agent. */
  override getCurrentCluster(): Cluster | null {
    const cluster = super.getCurrentCluster();
    if (!cluster?.proxyUrl) return cluster;
    const { proxyUrl: _ignored, ...direct } = cluster;
    return direct;
  }

  /** Used by applyToFetchOptions (Watch, Log, Metrics) and by the websocket handler (exec, attach, port-forward). */
  override async applyToHTTPSOptions(opts: Parameters<KubeConfig['applyToHTTPSOptions']>[0]): Promise<void> {
    await super.applyToHTTPSOptions(opts);
    (opts as https.RequestOptions).agent = this.tunnelAgent((opts as https.RequestOptions).agent);
  }

  /** Used by every generated API client (CoreV1Api, ...). */
  override async applySecurityAuthentication(context: RequestContext): Promise<void> {
    await super.applySecurityAuthentication(context);
    context.setAgent(this.tunnelAgent(context.getAgent()));
  }

  /**
   * An agent like the one client-node built, with the same TLS options (CA, client
   * certificate, server name, verification), whose connections are dialed through the
   * tunnel. One per request, as client-node builds its own.
   */
  private tunnelAgent(built: http.Agent | boolean | undefined): http.Agent {
    const options = built instanceof http.Agent ? (built as https.Agent).options : {};
    const secure = !(built instanceof http.Agent) || built instanceof https.Agent;
    const dial = (address: string) => this.dialApiServer(address);
    return secure ? new TunnelHttpsAgent(dial, options) : new TunnelHttpAgent(dial, options);
  }

  private async dialApiServer(requested: string): Promise<Duplex> {
    const cluster = this.tunnelCluster();
    const port = splitHostPort(requested)?.port ?? serverPort(new URL(this.getCurrentCluster()?.server ?? 'https://localhost'));
    const address = joinHostPort(cluster, port);
    try {
      return await this.dial(address);
    } catch (err) {
      const reason = err instanceof DialError && err.kind === 'refused' && this.proxyLabel
        ? `proxy ${this.proxyLabel} could not dial ${err.address}: ${err.message}`
        : (err as Error).message;
      throw new TunnelKubeDialError(`the tunnel could not connect to cluster "${cluster}" (${address}): ${reason}`, cluster, address, { cause: err });
    }
  }
}

/**
 * A TunnelKubeConfig with the clusters, users, contexts and current context of `config`
 * (authenticators added to `config` with addAuthenticator must be added to the result too).
 */
export function tunnelKubeConfig(config: KubeConfig, options: TunnelKubeOptions): TunnelKubeConfig {
  const tunneled = new TunnelKubeConfig(options);
  tunneled.loadFromOptions({
    clusters: config.getClusters().map((cluster) => ({ ...cluster })),
    users: config.getUsers().map((user) => ({ ...user })),
    contexts: config.getContexts().map((context) => ({ ...context })),
    currentContext: config.getCurrentContext(),
  });
  tunneled.tunnelCluster();
  return tunneled;
}

export interface ProxiedKubeconfigOptions {
  /** The local CONNECT proxy, e.g. `http://127.0.0.1:8001`. */
  proxyUrl: string;
  /** Every cluster entry goes to this tunnel cluster; by default each entry to the cluster of its own name. */
  cluster?: string;
  /** The directory of the source kubeconfig: relative file paths in it are made absolute. */
  baseDir?: string;
}

interface KubeconfigDocument {
  clusters?: Array<{ name?: string; cluster?: Record<string, unknown> }>;
  users?: Array<{ name?: string; user?: Record<string, unknown> & { exec?: Record<string, unknown> } }>;
}

/**
 * A kubeconfig (YAML or JSON text) rewritten for clients that reach the tunnel through the
 * local CONNECT proxy: each cluster gets `proxy-url`, its server becomes
 * `https://CLUSTER:PORT` (same scheme, port and path) and `tls-server-name` the original
 * host unless it has one, so the API server's certificate still verifies. Everything else
 * (credentials, exec plugins, extensions, contexts) is kept as it is.
 */
export function proxiedKubeconfig(text: string, options: ProxiedKubeconfigOptions): string {
  const document = loadYaml<KubeconfigDocument>(text);
  if (options.cluster !== undefined) checkClusterName(options.cluster, 'the cluster option');
  const absolute = (value: unknown) => (typeof value === 'string' && value !== '' && options.baseDir && !isAbsolute(value) ? resolvePath(options.baseDir, value) : value);
  for (const [i, entry] of (document.clusters ?? []).entries()) {
    const cluster = entry.cluster;
    const server = cluster?.server;
    if (!cluster || typeof server !== 'string') throw new Error(`clusters[${i}] of the kubeconfig has no server`);
    const url = new URL(server);
    const tunnel = options.cluster ?? checkClusterName(entry.name ?? '', `the kubeconfig's cluster name "${entry.name ?? ''}"`);
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    const path = url.pathname === '/' ? '' : url.pathname;
    cluster.server = `${url.protocol}//${joinHostPort(tunnel, serverPort(url))}${path}`;
    cluster['proxy-url'] = options.proxyUrl;
    if (url.protocol === 'https:' && !cluster['tls-server-name']) cluster['tls-server-name'] = host;
    if (cluster['certificate-authority'] !== undefined) cluster['certificate-authority'] = absolute(cluster['certificate-authority']);
  }
  for (const entry of document.users ?? []) {
    const user = entry.user;
    if (!user) continue;
    for (const field of ['client-certificate', 'client-key', 'token-file']) {
      if (user[field] !== undefined) user[field] = absolute(user[field]);
    }
    // As kubectl resolves it: a command with a path separator is relative to the kubeconfig.
    const command = user.exec?.command;
    if (user.exec && typeof command === 'string' && command.includes(sep)) user.exec.command = absolute(command);
  }
  return dumpYaml(document);
}

function serverPort(url: URL): number {
  if (url.port !== '') return Number(url.port);
  return url.protocol === 'http:' ? 80 : 443;
}

function checkClusterName(name: string, what: string): string {
  if (!CLUSTER_NAME.test(name)) {
    throw new Error(`${what} cannot be routed by the tunnel: a cluster name is letters, digits, ".", "-" and "_"; give the cluster name the agent serves (its --cluster-name)`);
  }
  return name;
}
