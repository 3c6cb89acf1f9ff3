/**
 * The fast dial path for clients that open connections all the time: one kept-alive HTTP/2
 * connection to the gRPC frontend (its unix socket, or mTLS over TCP), and for every
 * tunneled connection a Proxy stream of its own on it, opened with one HEADERS frame and one
 * DIAL_REQ. No TCP or TLS handshake per connection, and one tunneled connection still never
 * waits behind another. The reference server takes the same (one Proxy stream per dial, as
 * its client's reusable tunnel does), so the channel works against both.
 *
 * The connection is opened on the first dial and again on the first dial after it was lost;
 * a dial in flight when it is lost fails, the next one reconnects. Past
 * `maxStreamsPerConnection` open tunneled connections the channel opens another connection
 * for the next ones. It keeps the process alive only while a tunneled connection is open.
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
  /** Most tunneled connections on one HTTP/2 connection; more open another (default 1,000). */
  maxStreamsPerConnection?: number;
}

/**
 * Tunneled connections per HTTP/2 connection. Node's HTTP/2 reads nothing from a connection
 * while a write to it is pending, on both ends: when thousands of streams of one connection
 * close at once, the client's burst of closes and the server's burst of answers each
 * outgrow the socket's buffers, each side waits for the other to read, and the connection
 * stalls (10,000 connections closed in the same instant stalled one for 30 s in
 * test/scale.test.ts). A thousand keep each burst to tens of KiB.
 */
export const DEFAULT_MAX_STREAMS_PER_CONNECTION = 1_000;

/** One HTTP/2 connection of the channel and the tunneled connections (and dials) on it. */
class Lane {
  streams = 0;
  current?: http2.ClientHttp2Session;
  readonly session: Promise<http2.ClientHttp2Session>;

  constructor(open: (lane: Lane) => Promise<http2.ClientHttp2Session>) {
    this.session = open(this);
  }
}

export class GrpcChannel {
  private lanes: Lane[] = [];
  private closed = false;
  private opened = 0;
  private readonly maxStreams: number;

  constructor(readonly proxy: GrpcProxy, private readonly options: GrpcChannelOptions = {}) {
    this.maxStreams = Math.max(1, options.maxStreamsPerConnection ?? DEFAULT_MAX_STREAMS_PER_CONNECTION);
  }

  /** Names the proxy in messages: `unix:///run/grpc.sock`, `10.0.0.1:8090`. */
  get label(): string {
    return grpcTarget(this.proxy);
  }

  /** How many connections to the proxy the channel has opened so far (one, unless it lost one or needed more). */
  get connectionsOpened(): number {
    return this.opened;
  }

  /** Opens a tunneled connection to `address` (e.g. `c1:443`) on a kept connection. */
  async dial(address: string, options: GrpcDialOptions = {}): Promise<TunnelConnection> {
    if (this.closed) throw new DialError(`the gRPC channel to ${this.label} is closed`, address, 'closed');
    const lane = this.laneFor(address);
    const release = this.retain(lane);
    let session: http2.ClientHttp2Session | undefined;
    try {
      session = await lane.session;
      return await dialOnSession(session, this.proxy, address, {
        timeoutMs: options.timeoutMs ?? this.options.timeoutMs,
        flowControlWindow: options.flowControlWindow ?? this.options.flowControlWindow,
        signal: options.signal,
      }, { released: release, closed: () => undefined });
    } catch (err) {
      release();
      // A connection that went away under the dial is gone for the next one too.
      if (session && (session.destroyed || session.closed)) this.forget(lane);
      throw err;
    }
  }

  /** Closes the kept connections once their tunneled connections are done; later dials fail. */
  close(): void {
    this.closed = true;
    const lanes = this.lanes;
    this.lanes = [];
    for (const lane of lanes) void lane.session.then((s) => s.close(), () => undefined);
  }

  /** The first connection with room for another stream, or a new one. */
  private laneFor(address: string): Lane {
    const free = this.lanes.find((l) => l.streams < this.maxStreams);
    if (free) return free;
    const lane = new Lane((opening) => connectProxy(this.proxy, address, this.options.keepaliveMs).then((session) => {
      this.opened++;
      opening.current = session;
      const forget = () => this.forget(opening);
      session.once('close', forget);
      session.once('goaway', forget);
      if (opening.streams === 0) session.unref();
      if (this.closed) session.close();
      return session;
    }, (err: unknown) => {
      // The next dial tries again.
      this.forget(opening);
      throw err;
    }));
    this.lanes.push(lane);
    return lane;
  }

  private forget(lane: Lane): void {
    this.lanes = this.lanes.filter((l) => l !== lane);
  }

  /**
   * Counts a tunneled connection (or a dial) on `lane`, at once so that concurrent dials
   * spread over connections; its connection keeps the process alive while any is counted.
   * The function returned uncounts it, once.
   */
  private retain(lane: Lane): () => void {
    lane.streams++;
    if (lane.streams === 1) lane.current?.ref();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      lane.streams--;
      if (lane.streams === 0) lane.current?.unref();
    };
  }
}
