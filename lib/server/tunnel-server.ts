/**
 * The tunnel server: agent listener, frontends (HTTP-CONNECT over mTLS and unix socket, gRPC
 * over unix socket and mTLS), health and metrics, composed around one agent registry.
 */
import { once } from 'node:events';
import { rmSync } from 'node:fs';
import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { BehaviorSubject, filter, firstValueFrom, interval, map, race, startWith, timer } from 'rxjs';
import type { TlsSource } from '../pki/tls-source.js';
import type { AcceptingMux } from '../mux/accepting-mux.js';
import type { Multiplexer } from '../mux/multiplexer.js';
import { GrpcServer, type BidiHandler } from '../transport/grpc-server.js';
import { AGENT_CONNECT_PATH, PROXY_PATH } from '../wire/protocol.js';
import { PROXY_SERVER_WINDOW, agentStreamWindow } from '../transport/http2-windows.js';
import { DEFAULT_CONNECTION_WINDOW } from '../transport/flow-control-metadata.js';
import { logger } from '../observe/log.js';
import { MetricsRegistry } from '../observe/metrics.js';
import { HealthServer } from '../observe/health-server.js';
import { Readiness } from '../observe/readiness.js';
import { SERVER_DIAL_BUCKETS, StreamMetrics, instrumentDial } from '../observe/tunnel-metrics.js';
import { serverAgents, serverConnections } from '../observe/admin.js';
import type { StreamCounters } from '../mux/multiplexer.js';
import { AgentRegistry } from './agent-registry.js';
import { agentConnectHandler } from './agent-listener.js';
import { dialRouter, type Dial } from './dial-router.js';
import { DialError } from '../mux/dialing-mux.js';
import { GrpcStatus } from '../transport/grpc-metadata.js';
import { createMtlsConnectServer, createPlainConnectServer, type ClientTimeLimits, type TlsResumption } from './http-connect-frontend.js';
import { proxyHandler } from './grpc-frontend.js';
import type { ProxyStrategy } from './proxy-strategies.js';
import type { AgentIdentityRule } from './agent-identity.js';
import { observedPolicy, type ClientPolicy } from './client-policy.js';
import { DialLimiter, type DialLimits } from './limits.js';
import type { AgentAuthenticator } from './token-auth.js';
import { ReverseProxy } from './reverse-proxy/reverse-proxy.js';
import { describeRoutes, type RouteTable } from './reverse-proxy/routes.js';
import type { PushAcceptor } from './agent-listener.js';

export interface ReverseProxyConfig {
  /** HTTPS port of the reverse proxy; undefined leaves the port closed (push streams may still use the routes). */
  port?: number;
  routes: RouteTable;
  /** Certificate and client CAs of the port (default: the agent port's). */
  tls?: TlsSource;
  /** Take agents' push streams (default true). */
  acceptPush?: boolean;
  maxHeaderSize?: number;
}

export interface TunnelServerOptions {
  bindAddress: string;
  /** Agents' gRPC port (mTLS). */
  agentPort: number;
  /** HTTP-CONNECT over mTLS; undefined turns it off. */
  serverPort?: number;
  /** HTTP-CONNECT over a unix socket (no TLS). */
  httpConnectUds?: string;
  /** gRPC ProxyService over a unix socket (no TLS), as kube-apiserver uses it. */
  udsName?: string;
  /** gRPC ProxyService over mTLS TCP. */
  grpcPort?: number;
  healthBindAddress: string;
  healthPort?: number;
  /** /readyz fails while fewer agents than this are connected (default 1, as the reference; 0: ready without agents). */
  readyMinAgents?: number;
  /** Server certificate and key, and the CAs that frontend clients' certificates must chain to (followed as they change). */
  tls: TlsSource;
  /** The same for the agent port, when agents' certificates chain to other CAs than clients'. */
  agentTls?: TlsSource;
  /** What an agent's certificate lets it announce (default: anything, as the reference). */
  agentIdentity?: AgentIdentityRule;
  /** Checks agents' credentials (TokenReview) before they are admitted. */
  authenticateAgents?: AgentAuthenticator;
  /** Who may dial what through the frontends (default: every client, every cluster). */
  clientPolicy?: ClientPolicy;
  proxyStrategies: ProxyStrategy[];
  serverID?: string;
  serverCount?: number;
  /** The server count from Leases, once counted (it then overrides serverCount); see lib/kube/leases.ts. */
  countedServers?: () => number | undefined;
  /** How long a frontend waits for the agent's DIAL_RSP. */
  dialTimeoutMs?: number;
  /** Per-connection window of the flow-control extension; 0 turns the extension off. */
  connectionWindow?: number;
  /** Refuse our agents' second connection (for the server -> agent direction). */
  singleStream?: boolean;
  /** Where the server's metrics go (others may share it, e.g. the certificate manager's). */
  metrics?: MetricsRegistry;
  /** The reverse proxy to hub services, for push mode. */
  reverseProxy?: ReverseProxyConfig;
  /** How long HTTP-CONNECT and reverse-proxy clients have for their TLS handshake and their request head. */
  clientLimits?: ClientTimeLimits;
  /** TLS session resumption on the HTTP-CONNECT mTLS port; off when absent. */
  tlsResumption?: TlsResumption;
  /** Caps on the frontends' connections and dial rates, per agent and per client (default: none). */
  dialLimits?: DialLimits;
  /** TCP keepalive of HTTP-CONNECT client sockets, ms (0 or absent: off). */
  keepAliveMs?: number;
}

export interface ListeningAddresses {
  agent: string;
  reverseProxy?: string;
  httpConnect?: string;
  httpConnectUds?: string;
  grpcUds?: string;
  grpc?: string;
  health?: string;
}

const DEFAULT_DIAL_TIMEOUT_MS = 30_000;
/** How often a draining server looks whether its connections have finished. */
const DRAIN_POLL_MS = 100;
/** Node's timers hold at most this many milliseconds. */
const MAX_TIMER_MS = 2 ** 31 - 1;
export const SERVER_METRICS_PREFIX = 'konnectivity_network_proxy_server';

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

async function listenHttp(server: http.Server, where: { port: number; host: string } | { path: string }, what: string): Promise<AddressInfo | string> {
  if ('path' in where) rmSync(where.path, { force: true });
  server.listen(where);
  const [err] = await Promise.race([once(server, 'listening').then(() => [undefined]), once(server, 'error')]);
  if (err) {
    const place = 'path' in where ? where.path : hostPort(where.host, where.port);
    throw new Error(`cannot listen for ${what} on ${place}: ${(err as Error).message}`);
  }
  return server.address() as AddressInfo | string;
}

const RESUMED = { resumed: 'true' };
const FULL = { resumed: 'false' };

export class TunnelServer {
  readonly registry = new AgentRegistry();
  readonly serverID: string;
  readonly metrics: MetricsRegistry;
  /** What /readyz checks; `readiness.setDraining(reason)` marks the server as draining. */
  readonly readiness = new Readiness();

  private readonly log = logger('server');
  private readonly grpcServers: GrpcServer[] = [];
  /** The gRPC frontend's servers (unix socket, mTLS TCP), of grpcServers. */
  private readonly frontendGrpcServers: GrpcServer[] = [];
  private readonly httpServers: http.Server[] = [];
  private readonly frontendStreams = new Set<AcceptingMux>();
  private readonly pushStreams = new Set<AcceptingMux>();
  private health?: HealthServer;
  private proxy?: ReverseProxy;

  /**
   * True from the start of a graceful shutdown: new clients and agent streams are refused,
   * /readyz fails, and the connections already open may finish.
   */
  readonly draining$ = new BehaviorSubject<boolean>(false);

  constructor(private readonly options: TunnelServerOptions) {
    this.serverID = options.serverID ?? randomUUID();
    this.metrics = options.metrics ?? new MetricsRegistry(SERVER_METRICS_PREFIX);
  }

  /** Tunneled connections open through all agents. */
  get establishedConnections(): number {
    return this.registry.all().reduce((n, b) => n + b.mux.stats.connections, 0);
  }

  get pendingDials(): number {
    return this.registry.all().reduce((n, b) => n + b.mux.stats.pendingDials, 0);
  }

  /** What agents are told: the count from Leases when known, else --server-count. */
  get serverCount(): number {
    return this.options.countedServers?.() ?? this.options.serverCount ?? 1;
  }

  get draining(): boolean {
    return this.draining$.value;
  }

  /** Connections a graceful shutdown waits for: tunneled through agents, dialing, and pushed by agents. */
  get openConnections(): number {
    return this.establishedConnections + this.pendingDials + [...this.pushStreams].reduce((n, mux) => n + mux.stats.connections, 0);
  }

  /** Agents' streams open on this server (a split agent's pair counts once). */
  get agentStreams(): number {
    return this.registry.all().length;
  }

  /** Starts every listener of the options; when one fails, closes those already open. */
  async start(): Promise<ListeningAddresses> {
    try {
      return await this.startListeners();
    } catch (err) {
      await this.stop().catch(() => undefined);
      throw err;
    }
  }

  private async startListeners(): Promise<ListeningAddresses> {
    const o = this.options;
    const window = o.connectionWindow === 0 ? undefined : (o.connectionWindow ?? DEFAULT_CONNECTION_WINDOW);
    const { outcomes, handshakes, dialLatency, dialFailures, agentCounters, clientCounters } = this.registerMetrics();
    const refusals = this.metrics.counter('frontend_dials_refused_total', 'Frontend dials refused before they reached an agent, by frontend and reason (unauthorized, or the limit: max_pending_dials, max_connections_per_client, ...).');
    const limiter = o.dialLimits && DialLimiter.any(o.dialLimits)
      ? new DialLimiter({ limits: o.dialLimits, log: this.log, onRefusal: (reason, frontend) => refusals.inc({ frontend, reason }) })
      : undefined;
    const routed = instrumentDial(dialRouter(this.registry, o.proxyStrategies, o.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS, limiter), dialLatency, dialFailures);
    const dial: Dial = (address, dialOptions) => this.draining
      ? Promise.reject(new DialError(`tunnel server ${this.serverID} is shutting down; dial through another server`, address, 'refused'))
      : routed(address, dialOptions);
    const policyOf = (frontend: string) => observedPolicy(o.clientPolicy, () => refusals.inc({ frontend, reason: 'unauthorized' }));
    const push = this.startReverseProxy();

    const agentServer = new GrpcServer({ tls: o.agentTls ?? o.tls, name: 'agents', receiveWindow: agentStreamWindow(window), log: this.log });
    agentServer.handle(AGENT_CONNECT_PATH, agentConnectHandler({
      serverID: this.serverID, serverCount: () => this.serverCount, registry: this.registry, connectionWindow: window, log: this.log,
      splitStreams: !o.singleStream, identityRule: o.agentIdentity, authenticate: o.authenticateAgents,
      push, onPushStream: (mux) => this.trackStream(this.pushStreams, mux, agentCounters), counters: agentCounters, draining: () => this.draining,
    }));
    this.grpcServers.push(agentServer);
    const agentPort = await agentServer.listen({ host: o.bindAddress, port: o.agentPort });
    const addresses: ListeningAddresses = { agent: hostPort(o.bindAddress, agentPort) };
    this.log.info('listening', { service: 'agent', address: addresses.agent, transport: 'gRPC mTLS' });

    const proxyConfig = o.reverseProxy;
    if (this.proxy && proxyConfig?.port !== undefined) {
      const server = this.proxy.createTlsServer(proxyConfig.tls ?? o.agentTls ?? o.tls);
      this.httpServers.push(server);
      const address = await listenHttp(server, { host: o.bindAddress, port: proxyConfig.port }, 'the reverse proxy') as AddressInfo;
      addresses.reverseProxy = hostPort(o.bindAddress, address.port);
      this.log.info('listening', { service: 'reverse-proxy', address: addresses.reverseProxy, transport: 'HTTPS mTLS', routes: describeRoutes(proxyConfig.routes) });
    }

    const connectOptions = {
      dial, log: this.log, policy: policyOf('http-connect'), limits: o.clientLimits, keepAliveMs: o.keepAliveMs, resumption: o.tlsResumption,
      onOutcome: (outcome: string) => outcomes.inc({ outcome }),
      onHandshake: (resumed: boolean) => handshakes.inc(resumed ? RESUMED : FULL),
    };
    if (o.serverPort !== undefined) {
      const server = createMtlsConnectServer(o.tls, connectOptions);
      this.httpServers.push(server);
      const address = await listenHttp(server, { host: o.bindAddress, port: o.serverPort }, 'HTTP-CONNECT clients') as AddressInfo;
      addresses.httpConnect = hostPort(o.bindAddress, address.port);
      this.log.info('listening', { service: 'http-connect', address: addresses.httpConnect, transport: 'HTTPS mTLS' });
    }
    if (o.httpConnectUds) {
      const server = createPlainConnectServer(connectOptions);
      this.httpServers.push(server);
      await listenHttp(server, { path: o.httpConnectUds }, 'HTTP-CONNECT clients');
      addresses.httpConnectUds = o.httpConnectUds;
      this.log.info('listening', { service: 'http-connect-uds', address: o.httpConnectUds, transport: 'HTTP over unix socket' });
    }

    if (o.udsName || o.grpcPort !== undefined) {
      const serve = proxyHandler({
        dial, log: this.log, connectionWindow: window, policy: policyOf('grpc'),
        onStream: (mux) => this.trackStream(this.frontendStreams, mux, clientCounters),
      });
      const handler: BidiHandler = (call) => {
        if (!this.draining) return serve(call);
        this.log.info('refusing a gRPC client stream: this server is shutting down', { peer: call.peer });
        call.sendStatus(GrpcStatus.UNAVAILABLE, `tunnel server ${this.serverID} is shutting down; connect to another server`);
      };
      if (o.udsName) {
        const frontend = this.grpcServer(undefined, handler);
        await frontend.listen({ path: o.udsName });
        addresses.grpcUds = o.udsName;
        this.log.info('listening', { service: 'grpc-uds', address: o.udsName, transport: 'gRPC over unix socket' });
      }
      if (o.grpcPort !== undefined) {
        const frontend = this.grpcServer(o.tls, handler);
        const port = await frontend.listen({ host: o.bindAddress, port: o.grpcPort });
        addresses.grpc = hostPort(o.bindAddress, port);
        this.log.info('listening', { service: 'grpc', address: addresses.grpc, transport: 'gRPC mTLS' });
      }
    }

    if (o.healthPort !== undefined) {
      this.health = new HealthServer({
        host: o.healthBindAddress,
        port: o.healthPort,
        metrics: this.metrics,
        readiness: this.readiness.serverChecks(() => this.registry.size, o.readyMinAgents ?? 1),
        debug: {
          agents: (limit) => serverAgents(this.serverID, this.registry.all(), limit),
          connections: (limit) => serverConnections(this.serverID, this.registry.all(), limit),
        },
      });
      const address = await this.health.listen();
      addresses.health = hostPort(o.healthBindAddress, address.port);
      this.log.info('listening', { service: 'health', address: addresses.health, transport: 'HTTP' });
    }
    this.log.info('tunnel server started', { serverID: this.serverID, serverCount: this.serverCount, strategies: o.proxyStrategies.join(',') });
    return addresses;
  }

  /**
   * A graceful shutdown: refuses new clients and agent streams from now on (the HTTP
   * listeners close, gRPC frontend clients get GOAWAY on their connections and new calls
   * are answered UNAVAILABLE), sends DRAIN to the agents that
   * understand it, so that they take new dials through their other servers, and lets the
   * open connections finish for up to `drainTimeoutMs` before it closes everything.
   */
  async shutdown(drainTimeoutMs: number): Promise<void> {
    if (!this.draining) {
      this.draining$.next(true);
      this.setDraining('the server is shutting down');
      for (const server of this.httpServers) server.close();
      for (const server of this.frontendGrpcServers) server.goAway();
      let told = 0;
      for (const backend of this.registry.all()) {
        if (!backend.takesServerDrain) continue;
        backend.mux.sendDrain();
        told++;
      }
      for (const mux of this.pushStreams) mux.sendDrain();
      this.log.info('draining: refusing new clients and agent streams, waiting for open connections', {
        openConnections: this.openConnections, agentsTold: told, timeout: `${drainTimeoutMs}ms`,
      });
    }
    const outcome = await firstValueFrom(race(
      interval(DRAIN_POLL_MS).pipe(startWith(0), filter(() => this.openConnections === 0), map(() => 'drained' as const)),
      timer(Math.min(Math.max(0, drainTimeoutMs), MAX_TIMER_MS)).pipe(map(() => 'timeout' as const)),
    ));
    if (outcome === 'drained') this.log.info('drained: every connection has finished');
    else this.log.warn('drain timeout: closing the connections still open', { openConnections: this.openConnections, timeout: `${drainTimeoutMs}ms` });
    await this.stop();
  }

  async stop(): Promise<void> {
    this.draining$.next(true);
    for (const mux of [...this.frontendStreams, ...this.pushStreams]) mux.close();
    this.proxy?.close();
    for (const backend of this.registry.all()) backend.mux.close(new Error('the tunnel server is shutting down'));
    for (const server of this.grpcServers) server.close();
    await Promise.all(this.httpServers.map((server) => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    })));
    await this.health?.close().catch(() => undefined);
    if (this.options.udsName) rmSync(this.options.udsName, { force: true });
    if (this.options.httpConnectUds) rmSync(this.options.httpConnectUds, { force: true });
    this.log.info('tunnel server stopped');
  }

  /** The reverse proxy of the options, and what takes agents' push streams for it. */
  private startReverseProxy(): PushAcceptor | undefined {
    const config = this.options.reverseProxy;
    if (!config) return undefined;
    const proxy = new ReverseProxy({
      routes: config.routes,
      identityRule: this.options.agentIdentity ?? { kind: 'off' },
      log: this.log,
      maxHeaderSize: config.maxHeaderSize,
      limits: this.options.clientLimits,
      requests: this.metrics.counter('reverse_proxy_requests_total', 'Requests to the reverse proxy (its port and pushed connections), by route and status.'),
    });
    this.proxy = proxy;
    if (config.acceptPush === false) return undefined;
    return { refusal: (name) => proxy.pushRefusal(name), serve: (conn, name, caller) => proxy.servePushed(conn, name, caller) };
  }

  /** Marks the server as draining (/readyz answers 503 with the reason), or, with undefined, as not. */
  setDraining(reason: string | undefined): void {
    this.readiness.setDraining(reason);
  }

  /** Holds an accepting stream (a gRPC frontend client's, an agent's push stream) in `set` while it is open. */
  private trackStream(set: Set<AcceptingMux>, mux: AcceptingMux, counters: StreamCounters): void {
    mux.countInto(counters);
    set.add(mux);
    mux.once('close', () => set.delete(mux));
  }

  /** A gRPC frontend listener: the ProxyService, with mTLS or (on a unix socket) without. */
  private grpcServer(tls: TlsSource | undefined, handler: BidiHandler): GrpcServer {
    const server = new GrpcServer({ tls, name: 'grpc', receiveWindow: PROXY_SERVER_WINDOW, log: this.log });
    server.handle(PROXY_PATH, handler);
    this.grpcServers.push(server);
    this.frontendGrpcServers.push(server);
    return server;
  }

  /** Every packet stream of the server: to agents, from gRPC frontend clients, and agents' push streams. */
  private allStreams(): Multiplexer[] {
    return [...this.registry.all().map((b) => b.mux), ...this.frontendStreams, ...this.pushStreams];
  }

  private registerMetrics() {
    this.metrics.gauge('ready_backends', 'Connected agents.', () => this.registry.size);
    this.metrics.gauge('ready_backend_connections', 'Connected agents (the reference\'s older name of ready_backends).', () => this.registry.size);
    this.metrics.gauge('grpc_connections', 'Open gRPC streams, by service method (Connect: agents, Proxy: gRPC frontend clients).', () => [
      [{ service_method: 'Connect' }, this.registry.all().length],
      [{ service_method: 'Proxy' }, this.frontendStreams.size],
    ]);
    this.metrics.gauge('http_connections', 'Open HTTP-CONNECT tunnels (connections through agents that no gRPC frontend stream carries).', () =>
      Math.max(0, this.establishedConnections - [...this.frontendStreams].reduce((n, mux) => n + mux.stats.connections, 0)));
    this.metrics.gauge('server_count', 'The server count agents are told (--server-count, or counted from Leases).', () => this.serverCount);
    this.metrics.gauge('agent_streams', 'Open agent streams.', () => this.agentStreams);
    this.metrics.gauge('established_connections', 'Tunneled connections open through agents.', () => this.establishedConnections);
    this.metrics.gauge('pending_backend_dials', 'Dials waiting for an agent\'s answer.', () => this.pendingDials);
    this.metrics.gauge('grpc_frontend_streams', 'Open ProxyService streams.', () => this.frontendStreams.size);
    this.metrics.gauge('push_streams', 'Open push streams of agents.', () => this.pushStreams.size);
    this.metrics.gauge('push_connections', 'Open connections that agents pushed towards the hub.', () =>
      [...this.pushStreams].reduce((n, mux) => n + mux.stats.connections, 0));
    this.metrics.gauge('buffered_bytes', 'Bytes held in tunneled connections (to agents and gRPC frontends), waiting for a reader or for window.', () =>
      this.allStreams().reduce((n, mux) => n + mux.stats.bufferedBytes, 0));
    this.metrics.processMetrics();
    this.metrics.gauge('stray_packets', 'Packets from agents that fit no connection or dial, or that the protocol does not allow there (a run of DATA for one connection counts once).', () =>
      this.registry.all().reduce((n, b) => n + b.mux.stats.strayPackets, 0));
    this.metrics.gauge('protocol_violations', 'Tunneled connections closed because the agent or gRPC client sent beyond the flow-control window it was given.', () =>
      this.allStreams().reduce((n, mux) => n + mux.stats.protocolViolations, 0));
    const streams = new StreamMetrics(this.metrics, () => this.allStreams());
    return {
      outcomes: this.metrics.counter('http_connect_requests_total', 'HTTP-CONNECT requests by outcome.'),
      handshakes: this.metrics.counter('http_connect_tls_handshakes_total', 'TLS handshakes on the HTTP-CONNECT mTLS port: resumed="true" for a resumed session (--tls-resumption), "false" for a full handshake.'),
      dialLatency: this.metrics.histogram('dial_duration_seconds', 'Latency of dial to the remote endpoint in seconds (DIAL_REQ to the agent\'s successful DIAL_RSP).', SERVER_DIAL_BUCKETS),
      dialFailures: this.metrics.counter('dial_failure_count', 'Number of dial failures observed, by reason (no_agent, error_response, backend_dial_timeout, backend_close, frontend_close).'),
      agentCounters: streams.counters('from_agent', 'to_agent'),
      clientCounters: streams.counters('from_client', 'to_client'),
    };
  }
}
