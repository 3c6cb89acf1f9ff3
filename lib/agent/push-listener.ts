/**
 * Push mode through the tunnel: the agent listens in the managed cluster (`--push-listen
 * ADDRESS:PORT=ROUTE`), and carries each connection to the tunnel server over its existing
 * gRPC stream's push stream, where the reverse proxy serves it as a request to ROUTE's
 * upstream. Add-ons in the managed cluster need no route to the server at all: they speak
 * plain HTTP to the agent (inside their cluster), the agent's tunnel is mTLS.
 *
 * When no server has taken a push stream, or the server refuses the route, the add-on gets
 * an HTTP error that says so (503, 502) instead of a silently closed connection.
 */
import net from 'node:net';
import { once } from 'node:events';
import type { Logger } from '../observe/log.js';
import type { Counter } from '../observe/metrics.js';
import type { DialingMux } from '../mux/dialing-mux.js';
import { splice } from '../mux/splice.js';
import { splitHostPort } from '../transport/host-port.js';
import { UsageError } from '../common/errors.js';

export interface PushListenSpec {
  host: string;
  port: number;
  route: string;
}

const ROUTE_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DIAL_TIMEOUT_MS = 10_000;

/** `ADDRESS:PORT=ROUTE` values of --push-listen. */
export function parsePushListen(values: readonly string[]): PushListenSpec[] {
  return values.map((value) => {
    const at = value.lastIndexOf('=');
    const address = splitHostPort(at < 0 ? '' : value.slice(0, at));
    const route = value.slice(at + 1);
    if (!address || !ROUTE_NAME.test(route)) {
      throw new UsageError(`--push-listen=${value} is not ADDRESS:PORT=ROUTE (e.g. 127.0.0.1:8080=apiserver; ROUTE is a route name of the tunnel server: apiserver, norm, healthz or one of its routes file)`);
    }
    return { host: address.host, port: address.port, route };
  });
}

export interface PushListenersOptions {
  specs: PushListenSpec[];
  /** A push stream to carry a new connection on, if a server gave one. */
  pushStream(): DialingMux | undefined;
  log: Logger;
  /** Counts connections by route and outcome. */
  connections?: Counter;
}

export class PushListeners {
  private readonly servers: net.Server[] = [];
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly options: PushListenersOptions) {}

  /** Listens on every spec; resolves with the addresses (port 0 becomes the port taken). */
  async listen(): Promise<string[]> {
    const addresses: string[] = [];
    for (const spec of this.options.specs) {
      const server = net.createServer((socket) => this.accept(socket, spec.route));
      this.servers.push(server);
      server.listen(spec.port, spec.host);
      await Promise.race([once(server, 'listening'), once(server, 'error').then(([err]) => {
        throw new Error(`cannot listen for push connections on ${spec.host}:${spec.port}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; pick another --push-listen address`);
      })]);
      const { port } = server.address() as net.AddressInfo;
      const address = `${spec.host.includes(':') ? `[${spec.host}]` : spec.host}:${port}`;
      addresses.push(address);
      this.options.log.info('listening', { service: 'push', address, route: spec.route, transport: 'TCP, carried in the tunnel' });
    }
    return addresses;
  }

  get openConnections(): number {
    return this.sockets.size;
  }

  close(): void {
    for (const server of this.servers) server.close();
    for (const socket of this.sockets) socket.destroy();
  }

  private accept(socket: net.Socket, route: string): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', (err) => this.options.log.debug('push connection error', { route, err: err.message }));
    socket.setNoDelay(true);
    const stream = this.options.pushStream();
    if (!stream) {
      this.answer(socket, route, 503, 'no tunnel server has taken this agent\'s push stream yet (not connected, or a server without push); try again shortly');
      return;
    }
    // What the add-on sends before the dial is answered waits in the socket.
    socket.pause();
    const abort = new AbortController();
    socket.once('close', () => abort.abort());
    stream.dial(route, { timeoutMs: DIAL_TIMEOUT_MS, signal: abort.signal }).then((conn) => {
      if (socket.destroyed) {
        conn.destroy();
        return;
      }
      this.count(route, 'carried');
      splice(conn, socket);
      socket.resume();
    }, (err: Error) => {
      if (socket.destroyed) return;
      this.answer(socket, route, 502, `the tunnel server refused route ${route}: ${err.message}`);
    });
  }

  private answer(socket: net.Socket, route: string, status: 502 | 503, reason: string): void {
    this.count(route, String(status));
    this.options.log.warn('push connection not carried', { route, status, reason });
    // The request the add-on sent is not read; discarding it lets the answer reach it. An
    // add-on that never closes its side is closed after a while.
    socket.resume();
    setTimeout(() => socket.destroy(), 5_000).unref();
    const body = `tunnel-agent: ${reason}\n`;
    socket.end(`HTTP/1.1 ${status} ${status === 503 ? 'Service Unavailable' : 'Bad Gateway'}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  }

  private count(route: string, outcome: string): void {
    this.options.connections?.inc({ route, outcome });
  }
}
