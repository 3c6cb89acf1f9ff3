/**
 * The tunnel agent: keeps streams open to the tunnel server (as many as the server count
 * says, each to a distinct server id, for HA behind a load balancer, and at least one
 * through each of several addresses), reconnects with jittered backoff per address, and
 * dials targets for the server. A graceful shutdown sends DRAIN and lets open connections
 * finish; a server's DRAIN makes the agent find its other servers.
 */
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DialHandler } from '../mux/accepting-mux.js';
import { DEFAULT_CONNECTION_WINDOW } from '../transport/flow-control-metadata.js';
import { logger } from '../observe/log.js';
import { MetricsRegistry } from '../observe/metrics.js';
import { HealthServer } from '../observe/health-server.js';
import { AGENT_DIAL_BUCKETS, StreamMetrics } from '../observe/tunnel-metrics.js';
import { agentConnections, agentServers, type AgentServerStream } from '../observe/admin.js';
import type { StreamCounters } from '../mux/multiplexer.js';
import type { Histogram } from '../observe/metrics.js';
import { Backoff, type BackoffOptions } from '../common/backoff.js';
import { DownlinkUnpairedError, ServerConnection } from './server-connection.js';
import type { TlsSource } from '../pki/tls-source.js';
import { TargetDialTimeoutError, dialTarget, type TargetDialerOptions } from './target-dialer.js';
import { DialNotAllowedError } from './dial-allow-list.js';
import { PushListeners, type PushListenSpec } from './push-listener.js';
import { filter, firstValueFrom, interval, map, race, startWith, timer, type Observable, type Subscription } from 'rxjs';
import type { ServerAddresses } from './server-discovery.js';

export const AGENT_METRICS_PREFIX = 'konnectivity_network_proxy_agent';

/** How often the agent checks whether it holds streams to every server. */
const SYNC_INTERVAL_MS = 1_000;
/** How often a draining agent looks whether its connections have finished. */
const DRAIN_POLL_MS = 100;
/** Node's timers hold at most this many milliseconds. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * One way to the servers: an address of --proxy-server-host (or the discovered Service's
 * addresses in turn), with its own back-off, and the server its last attempt reached.
 */
interface ServerRoute {
  label: string;
  target(): string;
  backoff: Backoff;
  /** When the next attempt through it may start (ms since the epoch). */
  dueAt: number;
  /** The server id its last successful attempt reached. */
  reached?: string;
}

export interface TunnelAgentOptions {
  /** host:port of the tunnel server (or of a load balancer in front of several); ignored with serverAddresses. */
  serverAddress: string;
  /**
   * Several host:port of servers (or balancers); the agent holds a stream through each,
   * and to as many distinct servers as the server count says. Overrides serverAddress.
   */
  serverAddressList?: string[];
  /**
   * The server count from the servers' Leases at the hub (--count-server-leases); once it
   * has said, it is the count, instead of the servers' servercount headers.
   */
  serverCount$?: Observable<number>;
  /** The server's addresses as they change (e.g. discovered from its hub Service); attempts go round them. */
  serverAddresses?: Observable<ServerAddresses>;
  /** The agent's client certificate and key, and the CA the server certificate chains to. */
  tls: TlsSource;
  /** Overrides the TLS server name checked against the server certificate. */
  serverName?: string;
  agentID?: string;
  /** URL query string of identifiers, e.g. `host=my-cluster`. */
  agentIdentifiers: string;
  target?: TargetDialerOptions;
  backoff?: BackoffOptions;
  /** Per-connection window of the flow-control extension; 0 turns it off. */
  connectionWindow?: number;
  healthBindAddress?: string;
  healthPort?: number;
  /** Carry both directions on one connection, as the reference agent does. */
  singleStream?: boolean;
  /** A service-account token file, read again at every connect (it rotates), sent as a bearer token. */
  tokenFile?: string;
  /** Where the agent's metrics go (others may share it, e.g. the certificate manager's). */
  metrics?: MetricsRegistry;
  /** Local listeners whose connections go to the server's routes through the tunnel (push mode). */
  pushListen?: PushListenSpec[];
  /**
   * Runs once the certificate is there and before the first connect (the pre-start hooks);
   * when it fails the agent does not connect (whoever gave it decides what that means).
   */
  beforeConnect?: () => Promise<void>;
}

export class TunnelAgent {
  readonly agentID: string;
  readonly metrics: MetricsRegistry;

  private readonly log = logger('agent');
  private readonly connections = new Map<string, ServerConnection>();
  private readonly routes: ServerRoute[];
  private readonly dialFailures;
  private readonly dialLatency: Histogram;
  private readonly streamCounters: StreamCounters;
  /** The address each server stream was opened to, for the admin endpoints. */
  private readonly targets = new WeakMap<ServerConnection, string>();
  /** The servercount header of the last server connected. */
  private headerCount = 1;
  private leaseCount?: number;
  private leaseCounting?: Subscription;
  private skipSplitOnce = false;
  private running = false;
  private stopping = false;
  private turn = 0;
  private wake?: () => void;
  private loop?: Promise<void>;
  private health?: HealthServer;
  private push?: PushListeners;
  private discovered: ServerAddresses = { addresses: [], problem: 'waiting for the tunnel server\'s Service at the hub' };
  private discovery?: Subscription;
  private attempt = 0;
  private lastTarget = 'from its Service';
  private readonly pushDeclinedBy = new Set<string>();

  constructor(private readonly options: TunnelAgentOptions) {
    this.agentID = options.agentID ?? randomUUID();
    this.connected = new Promise((resolve) => { this.markConnected = resolve; });
    this.metrics = options.metrics ?? new MetricsRegistry(AGENT_METRICS_PREFIX);
    const route = (label: string, target: () => string): ServerRoute => ({ label, target, backoff: new Backoff(options.backoff), dueAt: 0 });
    const list = options.serverAddressList?.length ? options.serverAddressList : [options.serverAddress];
    this.routes = options.serverAddresses ? [route('from its Service', () => this.nextDiscovered())] : list.map((address) => route(address, () => address));
    this.metrics.gauge('open_server_connections', 'Streams open to tunnel servers.', () => this.connections.size);
    this.metrics.gauge('known_server_count', 'Server count the agent goes by: announced by the servers, or counted from their Leases.', () => this.serverCount);
    this.metrics.gauge('open_endpoint_connections', 'Connections open to targets.', () => this.openEndpointConnections);
    this.metrics.gauge('buffered_bytes', 'Bytes held in tunneled connections, waiting for a reader or for window.', () =>
      [...this.connections.values()].reduce((n, c) => n + c.mux.stats.bufferedBytes, 0));
    this.metrics.gauge('protocol_violations', 'Tunneled connections closed because the server sent beyond the flow-control window it was given.', () =>
      [...this.connections.values()].reduce((n, c) => n + c.mux.stats.protocolViolations, 0));
    this.metrics.gauge('stray_packets', 'Packets from servers that fit no connection of the stream they came on (a run of DATA for one connection counts once).', () =>
      [...this.connections.values()].reduce((n, c) => n + c.mux.stats.strayPackets, 0));
    this.metrics.processMetrics();
    this.dialFailures = this.metrics.counter('endpoint_dial_failure_total', 'Failed dials to targets, by reason.');
    this.dialLatency = this.metrics.histogram('dial_duration_seconds', 'Latency of dial to the remote endpoint in seconds.', AGENT_DIAL_BUCKETS);
    // The agent's side of the agent <-> server segments: it receives to_agent and sends from_agent.
    this.streamCounters = new StreamMetrics(this.metrics, () => [...this.connections.values()].flatMap((c) => c.push ? [c.mux, c.push] : [c.mux]))
      .counters('to_agent', 'from_agent');
    if (options.pushListen?.length) {
      this.push = new PushListeners({
        specs: options.pushListen,
        pushStream: () => this.pushStream(),
        log: this.log,
        connections: this.metrics.counter('push_connections_total', 'Connections to the push listeners, by route and outcome (carried, 502, 503).'),
      });
      this.metrics.gauge('open_push_connections', 'Open connections of the push listeners.', () => this.push?.openConnections ?? 0);
    }
  }

  /** The addresses of the push listeners, once started. */
  pushAddresses: string[] = [];
  /** Settles when the agent first holds a stream to a server (the post-start hooks wait for it). */
  readonly connected: Promise<void>;
  private markConnected!: () => void;

  get openEndpointConnections(): number {
    return [...this.connections.values()].reduce((n, c) => n + c.mux.stats.connections, 0);
  }

  get connectedServers(): string[] {
    return [...this.connections.keys()];
  }

  /** Dials waiting for a target's answer. */
  get pendingDials(): number {
    return [...this.connections.values()].reduce((n, c) => n + c.mux.stats.pendingDials, 0);
  }

  /** How many servers to hold a stream to. */
  get serverCount(): number {
    return this.leaseCount ?? this.headerCount;
  }

  /** Streams to servers that are not shutting down. */
  private get liveConnections(): number {
    return [...this.connections.values()].filter((c) => !c.serverDraining).length;
  }

  /** Whether the route's last attempt reached a server this agent holds a live stream to. */
  private covered(route: ServerRoute): boolean {
    const connection = route.reached === undefined ? undefined : this.connections.get(route.reached);
    return connection !== undefined && !connection.serverDraining;
  }

  /** Starts the health server and the connect loop; returns the health address if any. */
  async start(): Promise<string | undefined> {
    try {
      return await this.startListeners();
    } catch (err) {
      // A listener that failed leaves none of the others open.
      this.push?.close();
      await this.health?.close().catch(() => undefined);
      throw err;
    }
  }

  private async startListeners(): Promise<string | undefined> {
    let healthAddress: string | undefined;
    if (this.options.healthPort !== undefined) {
      this.health = new HealthServer({
        host: this.options.healthBindAddress ?? '0.0.0.0',
        port: this.options.healthPort,
        metrics: this.metrics,
        readiness: [{ name: 'server-connected', check: () => this.connections.size > 0 ? undefined : 'no servers connected' }],
        debug: {
          servers: (limit) => agentServers(this.agentID, this.serverStreams(), limit),
          connections: (limit) => agentConnections(this.agentID, this.serverStreams(), limit),
        },
      });
      const address = await this.health.listen();
      healthAddress = `${address.address}:${address.port}`;
      this.log.info('listening', { service: 'health', address: healthAddress, transport: 'HTTP' });
    }
    if (this.push) this.pushAddresses = await this.push.listen();
    this.leaseCounting = this.options.serverCount$?.subscribe((count) => {
      if (count !== this.leaseCount) this.log.info('server count from the servers\' Leases', { count });
      this.leaseCount = count;
      this.wake?.();
    });
    this.discovery = this.options.serverAddresses?.subscribe((found) => {
      this.discovered = found;
      this.wake?.();
    });
    this.running = true;
    this.loop = this.syncLoop();
    this.log.info('tunnel agent started', { agentID: this.agentID, identifiers: this.options.agentIdentifiers, server: this.routes.map((r) => r.label).join(',') });
    return healthAddress;
  }

  /**
   * A graceful shutdown, as the reference agent's first SIGTERM: sends DRAIN on every stream
   * (the servers route no new dials here), opens no new streams and refuses new dials, lets
   * the open connections finish for up to `drainTimeoutMs`, then closes everything.
   */
  async shutdown(drainTimeoutMs: number): Promise<void> {
    if (!this.stopping) {
      this.stopping = true;
      this.running = false;
      this.wake?.();
      for (const connection of this.connections.values()) connection.drain();
      this.log.info('draining: the servers route no new dials here; waiting for open connections', {
        openConnections: this.openEndpointConnections, servers: this.connections.size, timeout: `${drainTimeoutMs}ms`,
      });
    }
    const open = () => this.openEndpointConnections + this.pendingDials;
    const outcome = await firstValueFrom(race(
      interval(DRAIN_POLL_MS).pipe(startWith(0), filter(() => open() === 0), map(() => 'drained' as const)),
      timer(Math.min(Math.max(0, drainTimeoutMs), MAX_TIMER_MS)).pipe(map(() => 'timeout' as const)),
    ));
    if (outcome === 'drained') this.log.info('drained: every connection has finished');
    else this.log.warn('drain timeout: closing the connections still open', { openConnections: open(), timeout: `${drainTimeoutMs}ms` });
    await this.stop();
  }

  /** Sends DRAIN on every stream, then closes them. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.running = false;
    this.wake?.();
    this.push?.close();
    this.discovery?.unsubscribe();
    this.leaseCounting?.unsubscribe();
    for (const connection of this.connections.values()) connection.drain();
    for (const connection of this.connections.values()) connection.close();
    this.connections.clear();
    await this.loop;
    await this.health?.close();
    this.log.info('tunnel agent stopped');
  }

  private async syncLoop(): Promise<void> {
    if (this.options.tls.ready) {
      this.log.info('waiting for the agent\'s certificate before connecting');
      try {
        // Stopping does not wait for a certificate that may never come.
        await Promise.race([this.options.tls.ready, new Promise<void>((resolve) => { this.wake = resolve; })]);
        this.wake = undefined;
        if (!this.running) return;
      } catch (err) {
        // Whoever made the source decides what a failure means; there is nothing to connect with.
        this.log.error('the agent has no certificate; not connecting', { reason: (err as Error).message });
        return;
      }
    }
    if (this.options.beforeConnect) {
      try {
        await this.options.beforeConnect();
      } catch (err) {
        this.log.error('not connecting to the tunnel server', { reason: (err as Error).message });
        return;
      }
    }
    while (this.running) {
      // Every route until it reaches a live server, and any while fewer servers than the
      // count are held (behind a balancer, one route reaches several servers in turn).
      const wanted = this.liveConnections < this.serverCount ? this.routes : this.routes.filter((r) => !this.covered(r));
      if (wanted.length === 0) {
        await this.sleepUntilWoken(SYNC_INTERVAL_MS);
        continue;
      }
      const now = Date.now();
      const due = wanted.filter((r) => r.dueAt <= now);
      if (due.length === 0) {
        await this.sleepUntilWoken(Math.min(...wanted.map((r) => r.dueAt)) - now);
        continue;
      }
      const route = due[this.turn++ % due.length];
      try {
        const { serverID, known } = await this.connectOnce(route);
        route.backoff.reset();
        route.reached = serverID;
        // Behind a load balancer a known server means: try again in a while.
        route.dueAt = known ? Date.now() + SYNC_INTERVAL_MS : Date.now();
      } catch (err) {
        // A server that agreed to split but did not take the downlink (another server behind
        // a load balancer got it): the next attempt carries both directions on one stream.
        if ((err as Error).cause instanceof DownlinkUnpairedError) this.skipSplitOnce = true;
        const delay = route.backoff.next();
        route.dueAt = Date.now() + delay;
        this.log.warn('cannot connect to the tunnel server; retrying', { server: this.lastTarget, in: `${delay}ms`, reason: (err as Error).message });
      }
    }
  }

  /** One attempt through `route`: the server it reached, and whether the agent held a stream to it already. */
  private async connectOnce(route: ServerRoute): Promise<{ serverID: string; known: boolean }> {
    // Each attempt opens its own connections: to reach every server behind a load balancer,
    // and to give the downlink a connection of its own.
    const split = !this.options.singleStream && !this.skipSplitOnce;
    this.skipSplitOnce = false;
    const window = this.options.connectionWindow === 0 ? undefined : (this.options.connectionWindow ?? DEFAULT_CONNECTION_WINDOW);
    this.lastTarget = route.label;
    const target = route.target();
    this.lastTarget = target;
    const bearerToken = this.options.tokenFile ? await readToken(this.options.tokenFile) : undefined;
    const connection = await ServerConnection.open({
      bearerToken,
      target,
      tls: this.options.tls.current(),
      serverName: this.options.serverName,
      split,
      agentID: this.agentID,
      agentIdentifiers: this.options.agentIdentifiers,
      connectionWindow: window,
      dialHandler: this.dialHandler,
      push: this.push !== undefined,
      log: this.log,
    });
    if (!this.running) {
      connection.close();
      return { serverID: connection.serverID, known: true };
    }
    if (this.connections.has(connection.serverID)) {
      // Behind a load balancer, or two addresses of one server: we hold a stream to it already.
      connection.close();
      return { serverID: connection.serverID, known: true };
    }
    this.connections.set(connection.serverID, connection);
    connection.mux.countInto(this.streamCounters);
    connection.push?.countInto(this.streamCounters);
    this.targets.set(connection, target);
    this.headerCount = connection.serverCount;
    this.markConnected();
    if (connection.pushDeclined && !this.pushDeclinedBy.has(connection.serverID)) {
      // Once per server: a reference server never will, and it reconnects like any other.
      this.pushDeclinedBy.add(connection.serverID);
      this.log.warn('the tunnel server does not take push connections: the push listeners answer 503 until a server that does is connected', { serverID: connection.serverID });
    }
    this.log.info('connected to tunnel server', {
      serverID: connection.serverID, serverCount: connection.serverCount, flowControl: connection.mux.flowControl ? 'on' : 'off', streams: connection.split ? 'split' : 'single',
      ...(this.push ? { push: connection.push ? 'on' : 'off' } : {}),
    });
    connection.mux.once('drain-requested', () => {
      this.log.info('the tunnel server is shutting down: its open connections go on, new streams go to other servers', { serverID: connection.serverID });
      this.wake?.();
    });
    connection.mux.once('close', (reason: Error) => {
      if (this.connections.get(connection.serverID) !== connection) return;
      this.connections.delete(connection.serverID);
      if (this.running) this.log.warn('lost the stream to the tunnel server; reconnecting', { serverID: connection.serverID, reason: reason.message });
      this.wake?.();
    });
    return { serverID: connection.serverID, known: false };
  }

  private readonly dialHandler: DialHandler = async (request, signal) => {
    // A server that does not honour DRAIN (before v0.35) may still send dials.
    if (this.stopping) throw new Error(`agent ${this.agentID} is shutting down; dial through another agent`);
    const started = performance.now();
    try {
      const socket = await dialTarget(request.address, signal, this.options.target);
      this.dialLatency.observe((performance.now() - started) / 1000);
      return socket;
    } catch (err) {
      const reason = err instanceof DialNotAllowedError ? 'not_allowed' : err instanceof TargetDialTimeoutError ? 'timeout' : 'unknown';
      this.dialFailures.inc({ reason });
      this.log.info('dial to target failed', { address: request.address, reason: (err as Error).message });
      throw err;
    }
  };

  /** The streams to servers, for the admin endpoints. */
  private serverStreams(): AgentServerStream[] {
    return [...this.connections.values()].map((c) => ({ serverID: c.serverID, address: this.targets.get(c) ?? '', split: c.split, mux: c.mux, push: c.push }));
  }

  /** The discovered Service's addresses in turn. */
  private nextDiscovered(): string {
    const { addresses, problem } = this.discovered;
    if (addresses.length === 0) throw new Error(`no address for the tunnel server yet: ${problem}`);
    return addresses[this.attempt++ % addresses.length];
  }

  /** Whether a connected server has taken this agent's push stream. */
  get pushReady(): boolean {
    return this.pushStream() !== undefined;
  }

  /** A push stream of a connected server that is not draining, picked at random to spread the load. */
  private pushStream() {
    const streams = [...this.connections.values()].flatMap((c) => c.push && !c.push.isClosed && !c.push.draining ? [c.push] : []);
    return streams[Math.floor(Math.random() * streams.length)];
  }

  private async sleepUntilWoken(ms: number): Promise<void> {
    const controller = new AbortController();
    this.wake = () => controller.abort();
    await sleep(Math.min(Math.max(0, ms), MAX_TIMER_MS), undefined, { signal: controller.signal }).catch(() => undefined);
    this.wake = undefined;
  }
}

/** The token in `path`, as the reference agent reads it: the file's content, trimmed of a final newline. */
async function readToken(path: string): Promise<string> {
  try {
    return (await readFile(path, 'utf8')).replace(/\r?\n$/, '');
  } catch (err) {
    throw new Error(`cannot read the service account token ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}
