/**
 * The fast dial path for clients that open connections all the time: one kept-alive HTTP/2
 * connection to the gRPC frontend (its unix socket, or mTLS over TCP), and for every
 * tunneled connection a Proxy stream of its own on it, opened with one HEADERS frame and one
 * DIAL_REQ. No TCP or TLS handshake per connection, and one tunneled connection still never
 * waits behind another. The reference server takes the same (one Proxy stream per dial, as
 * its client's reusable tunnel does), so the channel works against both.
 *
 * The connection is opened on the first dial and again on the first dial after it was lost;
 * a dial in flight when it is lost fails, the next one reconnects. It keeps the process alive
 * only while a tunneled connection is open.
 */
import type http2 from 'node:http2';
import { DialError } from '../mux/dialing-mux.js';
import type { TunnelConnection } from '../mux/tunnel-connection.js';
import { connectProxy, dialOnSession, grpcTarget, type GrpcDialOptions, type GrpcProxy } from './grpc-dialer.js';

export interface GrpcChannelOptions {
  /** Defaults for every dial: DIAL_RSP timeout and the flow-control window. */
  timeoutMs?: number;
  flowControlWindow?: number;
  /** Keepalive ping interval of the kept connection (default: what servers allow a frontend client). */
  keepaliveMs?: number;
}

export class GrpcChannel {
  private session: Promise<http2.ClientHttp2Session> | undefined;
  private current: http2.ClientHttp2Session | undefined;
  /** Open tunneled connections per HTTP/2 connection: it is referenced while there are any. */
  private readonly open = new WeakMap<http2.ClientHttp2Session, number>();
  private closed = false;
  private opened = 0;

  constructor(readonly proxy: GrpcProxy, private readonly options: GrpcChannelOptions = {}) {}

  /** Names the proxy in messages: `unix:///run/grpc.sock`, `10.0.0.1:8090`. */
  get label(): string {
    return grpcTarget(this.proxy);
  }

  /** How many connections to the proxy the channel has opened so far (one, unless it lost one). */
  get connectionsOpened(): number {
    return this.opened;
  }

  /** Opens a tunneled connection to `address` (e.g. `c1:443`) on the kept connection. */
  async dial(address: string, options: GrpcDialOptions = {}): Promise<TunnelConnection> {
    if (this.closed) throw new DialError(`the gRPC channel to ${this.label} is closed`, address, 'closed');
    const session = await this.connection(address);
    const release = this.retain(session);
    try {
      return await dialOnSession(session, this.proxy, address, {
        timeoutMs: options.timeoutMs ?? this.options.timeoutMs,
        flowControlWindow: options.flowControlWindow ?? this.options.flowControlWindow,
        signal: options.signal,
      }, { released: release, closed: () => undefined });
    } catch (err) {
      release();
      // A connection that went away under the dial is gone for the next one too.
      if (session.destroyed || session.closed) this.forget(session);
      throw err;
    }
  }

  /** Closes the kept connection once its tunneled connections are done; later dials fail. */
  close(): void {
    this.closed = true;
    const session = this.session;
    this.session = undefined;
    void session?.then((s) => s.close(), () => undefined);
  }

  private connection(address: string): Promise<http2.ClientHttp2Session> {
    if (this.session) return this.session;
    const opening = connectProxy(this.proxy, address, this.options.keepaliveMs).then((session) => {
      this.opened++;
      this.current = session;
      const forget = () => this.forget(session);
      session.once('close', forget);
      session.once('goaway', forget);
      session.unref();
      if (this.closed) session.close();
      return session;
    }, (err: unknown) => {
      // The next dial tries again.
      if (this.session === opening) this.session = undefined;
      throw err;
    });
    this.session = opening;
    return opening;
  }

  private forget(session: http2.ClientHttp2Session): void {
    if (this.current !== session) return;
    this.current = undefined;
    this.session = undefined;
  }

  /** Counts a tunneled connection on `session`; the function returned uncounts it, once. */
  private retain(session: http2.ClientHttp2Session): () => void {
    const count = this.open.get(session) ?? 0;
    this.open.set(session, count + 1);
    if (count === 0) session.ref();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.open.get(session) ?? 1) - 1;
      this.open.set(session, left);
      if (left === 0) session.unref();
    };
  }
}
