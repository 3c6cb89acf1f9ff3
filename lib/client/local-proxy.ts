/**
 * A local HTTP CONNECT proxy in front of the tunnel, for clients that cannot present a client
 * certificate to a proxy: kubectl's `proxy-url` (and curl's `--proxy http://...`) speak plain
 * HTTP CONNECT. Each CONNECT is dialed through the tunnel with this process's credentials, so
 * the proxy listens on loopback only unless told otherwise: it has no authentication, and
 * whoever reaches it may dial every cluster the tunnel serves.
 *
 * `200 Connection Established` is sent only once the tunnel's dial succeeded; a failed dial
 * is answered `502` with the tunnel's reason; any other method is `405`. Bytes are spliced
 * both ways at the pace of the slower side, and an end of either side is passed on.
 */
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { UsageError } from '../common/errors.js';
import { DialError } from '../mux/dialing-mux.js';
import { logger, type Logger } from '../observe/log.js';
import { joinHostPort, splitHostPort } from '../transport/host-port.js';
import { createTunnelDialer, tunnelProxyLabel, type TunnelDialerOptions } from './tunnel-dialer.js';
import type { TunnelDial } from './tunnel-http-agent.js';

const DEFAULT_HOST = '127.0.0.1';

export interface LocalProxyOptions {
  /** Where to listen; default 127.0.0.1 and a free port. */
  listen?: { host?: string; port?: number };
  /** How to reach the tunnel server (as createTunnelDialer takes it), or a dial function. */
  dialer: TunnelDialerOptions | TunnelDial;
  /** Send every CONNECT to this cluster, with the port asked for; by default to the host asked for. */
  cluster?: string;
  /** Listen on an address other than loopback. The proxy has no authentication: only on a network you trust. */
  allowNonLoopback?: boolean;
  log?: Logger;
}

export interface LocalProxy {
  /** The address listened on, e.g. `127.0.0.1:8001`. */
  readonly address: string;
  readonly host: string;
  readonly port: number;
  /** The proxy as kubeconfig's proxy-url writes it: `http://127.0.0.1:8001`. */
  readonly url: string;
  /** Tunneled connections open now. */
  readonly connections: number;
  /** Stops listening and closes every tunneled connection. */
  close(): Promise<void>;
}

/** Whether `host` is a loopback name or address: localhost, 127.0.0.0/8, ::1. */
export function isLoopback(host: string): boolean {
  const bare = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (bare === 'localhost') return true;
  if (net.isIPv4(bare)) return bare.startsWith('127.');
  if (net.isIPv6(bare)) return bare === '::1' || /^::ffff:127\./.test(bare);
  return false;
}

export async function startLocalProxy(options: LocalProxyOptions): Promise<LocalProxy> {
  const host = options.listen?.host ?? DEFAULT_HOST;
  const log = options.log ?? logger('local-proxy');
  if (!isLoopback(host) && !options.allowNonLoopback) {
    throw new UsageError(`the local CONNECT proxy would listen on ${host}, which is not a loopback address: it has no authentication, and anyone who reaches it could dial every cluster through your tunnel certificate. Listen on 127.0.0.1, or allow a non-loopback address explicitly`);
  }
  const dial = typeof options.dialer === 'function' ? options.dialer : createTunnelDialer(options.dialer);
  const proxyLabel = typeof options.dialer === 'function' ? undefined : tunnelProxyLabel(options.dialer);
  /** Clients and tunneled connections open now, closed together by close(). */
  const open = new Set<Duplex>();
  const tunnels = new Set<Duplex>();

  const server = http.createServer((req, res) => {
    const body = `${req.method ?? 'this method'} is not served here: this is a CONNECT proxy into the tunnel; use it as an http:// proxy (kubeconfig proxy-url, curl -p --proxy)\n`;
    res.writeHead(405, { Allow: 'CONNECT', 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(body), Connection: 'close' });
    res.end(body);
  });
  server.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    const requested = splitHostPort(req.url ?? '');
    if (!requested) {
      refuse(client, 400, 'Bad Request', `CONNECT needs host:port, not "${req.url ?? ''}"`);
      return;
    }
    const address = joinHostPort(options.cluster ?? requested.host, requested.port);
    const from = joinHostPort(client.remoteAddress ?? '?', client.remotePort ?? 0);
    open.add(client);
    client.once('close', () => open.delete(client));
    client.on('error', (err: Error) => log.debug('client connection failed', { from, address, error: err }));
    dial(address).then((tunnel) => {
      if (client.destroyed) {
        tunnel.destroy();
        return;
      }
      open.add(tunnel);
      tunnels.add(tunnel);
      tunnel.once('close', () => {
        open.delete(tunnel);
        tunnels.delete(tunnel);
      });
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length > 0) tunnel.write(head);
      splice(client, tunnel, (err) => log.debug('tunneled connection failed', { from, address, error: err }));
      log.debug('tunneled connection open', { from, address, requested: req.url });
    }, (err: Error) => {
      const reason = err instanceof DialError && err.kind === 'refused' && proxyLabel
        ? `proxy ${proxyLabel} could not dial ${err.address}: ${err.message}`
        : err.message;
      log.warn('dial through the tunnel failed', { from, address, reason });
      refuse(client, 502, 'Bad Gateway', reason);
    });
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (socket.writable && err.code !== 'ECONNRESET') socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    else socket.destroy();
  });

  server.listen(options.listen?.port ?? 0, host);
  try {
    await once(server, 'listening');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new Error(`the local CONNECT proxy cannot listen on ${joinHostPort(host, options.listen?.port ?? 0)}: ${code}`, { cause: err });
  }
  const bound = server.address() as net.AddressInfo;
  const address = joinHostPort(bound.address, bound.port);
  log.info('local CONNECT proxy listening', { address, cluster: options.cluster });
  return {
    address,
    host: bound.address,
    port: bound.port,
    url: `http://${address}`,
    get connections() {
      return tunnels.size;
    },
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      for (const stream of open) stream.destroy();
      await closed;
    },
  };
}

/** Answers a CONNECT that cannot be served, with the reason as the body, and closes. */
function refuse(client: net.Socket, status: number, message: string, reason: string): void {
  if (client.destroyed) return;
  const body = `${reason}\n`;
  client.end(`HTTP/1.1 ${status} ${message}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}

/**
 * Copies bytes both ways with backpressure (pipe pauses the source while the destination is
 * full) and passes an end on as an end. A side that fails or closes before it ended cleanly
 * takes the other side down with it; one that finished lets the other finish its writes.
 */
function splice(client: net.Socket, tunnel: Duplex, onError: (err: Error) => void): void {
  client.pipe(tunnel);
  tunnel.pipe(client);
  const fail = (err: Error) => {
    onError(err);
    client.destroy();
    tunnel.destroy();
  };
  client.on('error', fail);
  tunnel.on('error', fail);
  const cleanlyDone = (stream: Duplex) => stream.readableEnded && stream.writableFinished;
  client.once('close', () => {
    if (!cleanlyDone(client)) tunnel.destroy();
  });
  tunnel.once('close', () => {
    if (!cleanlyDone(tunnel)) client.destroy();
  });
}
