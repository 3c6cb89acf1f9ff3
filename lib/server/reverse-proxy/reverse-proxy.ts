/**
 * The reverse proxy for push mode: add-ons in a managed cluster, which can reach only the
 * tunnel server, reach hub services through it. Requests come on the server's reverse-proxy
 * port (HTTPS, client certificates verified: the caller's cluster is its agent certificate's)
 * or on connections that an agent pushed through its tunnel (the caller's cluster is the
 * agent's, and each connection is bound to one route). Either way the same routes and
 * allow-lists apply: a path with no route is 404 and reaches nothing, a caller the route is
 * not open to is 403, and a certificate that did not verify is 401.
 */
import http from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import type { TlsSource } from '../../pki/tls-source.js';
import type { Logger } from '../../observe/log.js';
import type { Counter } from '../../observe/metrics.js';
import { followTlsSource } from '../../transport/tls-reload.js';
import { describePeer, peerIdentity } from '../../transport/peer-identity.js';
import { clusterOfCertificate, type AgentIdentityRule } from '../agent-identity.js';
import { describeRoutes, matchRoute, routeNamed, routeRefusal, upstreamPath, type Caller, type Route, type RouteTable } from './routes.js';
import { DEFAULT_CLIENT_TIME_LIMITS, clientTimeOptions, type ClientTimeLimits } from '../http-connect-frontend.js';
import { UpstreamError, forwardRequest, forwardUpgrade, responseHead, upstreamAgent, type ForwardContext } from './forward.js';

/** Node's default; a longer request head is answered 431. */
export const DEFAULT_MAX_HEADER_SIZE = 16 * 1024;

export interface ReverseProxyOptions {
  routes: RouteTable;
  /** How an agent certificate names its cluster (the server's --agent-identity). */
  identityRule: AgentIdentityRule;
  log: Logger;
  /** Counts requests by route and status. */
  requests?: Counter;
  maxHeaderSize?: number;
  /** The TLS handshake's and the request head's time limits. */
  limits?: ClientTimeLimits;
}

interface Binding {
  caller: Caller;
  /** A pushed connection serves this route only, with paths relative to it. */
  route?: Route;
  /** A pushed connection's time limit for its first request head. */
  headTimer?: NodeJS.Timeout;
}

interface Refusal {
  status: number;
  message: string;
  route: string;
}

export class ReverseProxy {
  private readonly agents = new Map<Route, http.Agent>();
  private readonly bindings = new WeakMap<object, Binding>();
  private readonly pushServer: http.Server;
  private readonly pushed = new Set<Duplex>();

  constructor(private readonly options: ReverseProxyOptions) {
    for (const route of options.routes.routes) if (route.upstream) this.agents.set(route, upstreamAgent(route.upstream));
    this.pushServer = this.attach(http.createServer(this.serverOptions()));
  }

  private get limits(): ClientTimeLimits {
    return this.options.limits ?? DEFAULT_CLIENT_TIME_LIMITS;
  }

  get routes(): RouteTable {
    return this.options.routes;
  }

  /** The reverse-proxy port's listener: TLS with the server's certificate, client certificates requested and verified. */
  createTlsServer(tls: TlsSource): https.Server {
    const { key, cert, ca } = tls.current();
    // Certificates are checked per request, so that callers without one can use open routes.
    const server = https.createServer({ ...this.serverOptions(), key, cert, ca, requestCert: true, rejectUnauthorized: false });
    // A listener here keeps Node from closing the socket itself, handshake timeouts included.
    server.on('tlsClientError', (err, socket) => {
      this.options.log.debug('reverse-proxy TLS handshake failed', { err: err.message });
      socket.destroy();
    });
    const follower = followTlsSource(server, tls, 'reverse-proxy', this.options.log);
    server.once('close', () => follower.unsubscribe());
    return this.attach(server);
  }

  /** Why an agent may not push connections to the route `name`, or undefined when it may. */
  pushRefusal(name: string): string | undefined {
    if (routeNamed(this.options.routes, name)) return undefined;
    return `the tunnel server has no route named "${name}" (routes: ${describeRoutes(this.options.routes)}); fix the agent's --push-listen`;
  }

  /** Serves HTTP on a connection an agent pushed through its tunnel for the route `name` (checked with pushRefusal). */
  servePushed(conn: Duplex, routeName: string, caller: Caller): void {
    const binding: Binding = { caller, route: routeNamed(this.options.routes, routeName) };
    this.bindings.set(conn, binding);
    // The push server never listens, so Node neither times its request heads nor tracks its
    // connections: both are done here. A connection gets the head time for its first request.
    this.pushed.add(conn);
    const timer = binding.headTimer = setTimeout(() => {
      this.count('-', 408);
      this.options.log.info('reverse-proxy refused a pushed connection', { status: 408, reason: 'the request head did not arrive in time', caller: caller.subject });
      conn.end(rawText(408, `tunnel-server: the request head did not arrive within ${this.limits.requestHeadMs} ms`));
      setTimeout(() => conn.destroy(), 1_000).unref();
    }, this.limits.requestHeadMs);
    timer.unref();
    conn.once('close', () => {
      clearTimeout(timer);
      this.pushed.delete(conn);
    });
    conn.on('error', (err) => this.options.log.debug('pushed connection error', { err: err.message }));
    this.pushServer.emit('connection', conn);
  }

  close(): void {
    for (const conn of this.pushed) conn.destroy();
    for (const agent of this.agents.values()) agent.destroy();
  }

  private serverOptions(): http.ServerOptions {
    return { maxHeaderSize: this.options.maxHeaderSize ?? DEFAULT_MAX_HEADER_SIZE, requireHostHeader: true, ...clientTimeOptions(this.limits) };
  }

  private attach<S extends http.Server>(server: S): S {
    server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => this.handleRequest(req, res));
    server.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => this.handleUpgrade(req, socket, head));
    server.on('connect', (req: http.IncomingMessage, socket: Duplex) => {
      // Node takes its own error listener off a CONNECT's socket before it hands it over.
      socket.on('error', (err) => this.options.log.debug('reverse-proxy socket error', { err: err.message }));
      this.refuse(undefined, { status: 405, route: '-', message: 'the reverse-proxy port does not tunnel CONNECT; use the HTTP-CONNECT port' }, req, socket);
    });
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.handleClientError(err, socket));
    // A watch's request is over once its head is in; only slow heads are cut off.
    server.requestTimeout = 0;
    server.headersTimeout = this.limits.requestHeadMs;
    return server;
  }

  /** The binding of a request's socket; a request head arrived, so a pushed connection's head timer is done. */
  private bindingOf(socket: Duplex): Binding {
    const known = this.bindings.get(socket);
    if (known) {
      clearTimeout(known.headTimer);
      return known;
    }
    const binding = { caller: this.callerOfTls(socket) };
    this.bindings.set(socket, binding);
    return binding;
  }

  private callerOfTls(socket: Duplex): Caller {
    if (!(socket instanceof TLSSocket)) return { subject: 'a connection without TLS' };
    const presented = socket.getPeerCertificate();
    if (!presented || Object.keys(presented).length === 0) return { subject: 'no client certificate' };
    if (!socket.authorized) {
      const cn = (presented.subject as unknown as Record<string, string> | undefined)?.CN;
      return { subject: `CN=${cn ?? '?'}`, untrusted: String(socket.authorizationError ?? 'not verified') };
    }
    const peer = peerIdentity(socket);
    return { subject: describePeer(peer), cluster: clusterOfCertificate(this.options.identityRule, peer) };
  }

  /** The route and upstream path for a request, or why it is refused. */
  private resolve(req: http.IncomingMessage, binding: Binding): { route: Route; path: string } | Refusal {
    const target = requestTarget(req.url ?? '');
    if (!target) return { status: 400, route: '-', message: `the request target "${req.url}" is not a path` };
    const route = binding.route ?? matchRoute(this.options.routes, target.pathname);
    if (!route) return { status: 404, route: '-', message: `no route for ${target.pathname} on this tunnel server (routes: ${describeRoutes(this.options.routes)})` };
    const refusal = routeRefusal(this.options.routes, route, binding.caller);
    if (refusal) return { status: binding.caller.untrusted ? 401 : 403, route: route.name, message: refusal };
    return { route, path: `${upstreamPath(route, target.pathname, binding.route !== undefined)}${target.search}` };
  }

  private context(route: Route, path: string, socket: Duplex, binding: Binding): ForwardContext {
    return {
      upstream: route.upstream!,
      agent: this.agents.get(route)!,
      path,
      cluster: binding.caller.cluster,
      remoteAddress: binding.route ? undefined : (socket as { remoteAddress?: string }).remoteAddress,
      proto: binding.route ? 'http' : 'https',
    };
  }

  private handleRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const binding = this.bindingOf(req.socket);
    const resolved = this.resolve(req, binding);
    if ('status' in resolved) {
      this.refuse(res, resolved, req, req.socket);
      return;
    }
    const { route, path } = resolved;
    if (route.local === 'healthz') {
      this.count(route.name, 200);
      res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' });
      res.end('ok');
      return;
    }
    forwardRequest(req, res, this.context(route, path, req.socket, binding)).then(
      (status) => this.count(route.name, status),
      (err: UpstreamError) => this.upstreamFailed(route, err, binding, () => {
        if (res.headersSent) res.destroy();
        else text(res, err.status ?? 502, `tunnel-server: route ${route.name}: ${err.message}`);
      }),
    );
  }

  private handleUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', (err) => this.options.log.debug('reverse-proxy socket error', { err: err.message }));
    const binding = this.bindingOf(socket);
    const resolved = this.resolve(req, binding);
    if ('status' in resolved) {
      this.refuse(undefined, resolved, req, socket);
      return;
    }
    const { route, path } = resolved;
    if (route.local) {
      this.refuse(undefined, { status: 400, route: route.name, message: `route ${route.name} does not upgrade connections` }, req, socket);
      return;
    }
    forwardUpgrade(req, socket, head, this.context(route, path, socket, binding)).then(
      (status) => this.count(route.name, status),
      (err: UpstreamError) => this.upstreamFailed(route, err, binding, () => {
        socket.end(rawText(err.status ?? 502, `tunnel-server: route ${route.name}: ${err.message}`));
      }),
    );
  }

  private upstreamFailed(route: Route, err: UpstreamError, binding: Binding, answer: () => void): void {
    this.count(route.name, err.status ?? 502);
    this.options.log.warn('reverse-proxy upstream failed', { route: route.name, cluster: binding.caller.cluster, caller: binding.caller.subject, reason: err.message });
    answer();
  }

  /** Answers a refused request (on `res`, or raw on an upgrade or CONNECT socket) and logs it. */
  private refuse(res: http.ServerResponse | undefined, refusal: Refusal, req: http.IncomingMessage, socket: Duplex): void {
    const binding = this.bindings.get(socket);
    this.count(refusal.route, refusal.status);
    const fields = { status: refusal.status, method: req.method, path: req.url, cluster: binding?.caller.cluster, caller: binding?.caller.subject, reason: refusal.message };
    if (refusal.status === 404) this.options.log.info('reverse-proxy request has no route', fields);
    else this.options.log.warn('reverse-proxy request refused', fields);
    const message = `tunnel-server: ${refusal.message}`;
    if (res) text(res, refusal.status, message);
    else socket.end(rawText(refusal.status, message));
  }

  private handleClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const reason = status === 431 ? `the request head is larger than ${this.options.maxHeaderSize ?? DEFAULT_MAX_HEADER_SIZE} bytes`
      : status === 408 ? 'the request head did not arrive in time' : `malformed HTTP request (${err.code ?? err.message})`;
    this.count('-', status);
    this.options.log.info('reverse-proxy refused a malformed request', { status, reason, caller: this.bindings.get(socket)?.caller.subject });
    if (socket.writable) socket.end(rawText(status, `tunnel-server: ${reason}`));
    else socket.destroy();
  }

  private count(route: string, status: number): void {
    this.options.requests?.inc({ route, code: String(status) });
  }
}

/** The path (dot segments resolved) and query of an origin-form or absolute-form request target. */
function requestTarget(url: string): { pathname: string; search: string } | undefined {
  if (!url.startsWith('/') && !/^https?:\/\//i.test(url)) return undefined;
  try {
    const parsed = new URL(url, 'http://request.target');
    return { pathname: parsed.pathname, search: parsed.search };
  } catch {
    return undefined;
  }
}

function text(res: http.ServerResponse, status: number, message: string): void {
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8' });
  res.end(`${message}\n`);
}

function rawText(status: number, message: string): string {
  const body = `${message}\n`;
  return responseHead(status, undefined, ['Content-Type', 'text/plain; charset=utf-8', 'Content-Length', String(Buffer.byteLength(body)), 'Connection', 'close']) + body;
}
