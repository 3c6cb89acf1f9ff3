/**
 * The fast dial path for clients that open connections all the time: one kept-alive HTTP/2
 * connection to the gRPC frontend (its unix socket, or mTLS over TCP), and no TCP or TLS
 * handshake per tunneled connection.
 *
 * On our server a dial is one DIAL_REQ on a Proxy stream the channel keeps open (its
 * carrier): our server takes many dials on one stream and says so by announcing the
 * flow-control extension, whose per-connection windows keep one tunneled connection from
 * waiting behind another. The first dial on a connection has a stream of its own and
 * learns from the answer whether the server does; the reference server, which takes one
 * dial per Proxy stream (as its client's reusable tunnel does), then gets a stream per dial:
 * one HEADERS frame and one DIAL_REQ.
 *
 * The connection is opened on the first dial and again on the first dial after it was lost;
 * a dial in flight when it is lost fails, the next one reconnects. Past
 * `maxStreamsPerConnection` open tunneled connections the channel opens another connection
 * for the next ones. It keeps the process alive only while a tunneled connection is open.
 */
import type http2 from 'node:http2';
import { DialError, DialingMux, type DialOptions } from '../mux/dialing-mux.js';
import type { TunnelConnection } from '../mux/tunnel-connection.js';
import { DEFAULT_CONNECTION_WINDOW, announceFlowControl, negotiateFlowControl } from '../transport/flow-control-metadata.js';
import { openCall } from '../transport/grpc-client.js';
import { Metadata } from '../transport/grpc-metadata.js';
import { PROXY_PATH } from '../wire/protocol.js';
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

/** How long the server may take to answer the opening of a carrier stream. */
const CARRIER_OPEN_TIMEOUT_MS = 10_000;

/**
 * A Proxy stream that carries many tunneled connections, and what each of them holds of its
 * lane: released when the connection is over on the wire (only the close's answer may still
 * come), or when the stream goes.
 */
class Carrier {
  private readonly holds = new Map<TunnelConnection, () => void>();

  constructor(readonly mux: DialingMux) {
    mux.on('connection-closed', (conn: TunnelConnection) => this.release(conn));
    mux.once('close', () => {
      for (const conn of [...this.holds.keys()]) this.release(conn);
    });
  }

  async dial(address: string, options: Pick<DialOptions, 'timeoutMs' | 'signal'>, release: () => void): Promise<TunnelConnection> {
    const conn = await this.mux.dial(address, options);
    // The peer's close can come in the same read as the DIAL_RSP, before this runs.
    if (conn.isOpenOnWire && !this.mux.isClosed) this.holds.set(conn, release);
    else release();
    return conn;
  }

  private release(conn: TunnelConnection): void {
    const release = this.holds.get(conn);
    this.holds.delete(conn);
    release?.();
  }
}

/** One HTTP/2 connection of the channel and the tunneled connections (and dials) on it. */
class Lane {
  streams = 0;
  current?: http2.ClientHttp2Session;
  readonly session: Promise<http2.ClientHttp2Session>;
  /** Whether the server takes many dials on one stream; unknown until a first dial was answered. */
  shared?: boolean;
  /** The carrier stream, once one is open or opening; undefined when it could not be opened. */
  carrier?: Promise<Carrier | undefined>;
  /** No new dials; closed once its tunneled connections are done. */
  retired = false;

  constructor(open: (lane: Lane) => Promise<http2.ClientHttp2Session>) {
    this.session = open(this);
  }

  /** Closes the connection once nothing is open on it (the carrier would keep it forever). */
  closeWhenIdle(): void {
    if (!this.retired || this.streams > 0) return;
    void this.carrier?.then((carrier) => carrier?.mux.close());
    void this.session.then((s) => s.close(), () => undefined);
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
    const timeoutMs = options.timeoutMs ?? this.options.timeoutMs;
    const window = options.flowControlWindow ?? this.window;
    let session: http2.ClientHttp2Session | undefined;
    try {
      session = await lane.session;
      // A dial that asks for a window of its own gets a stream of its own.
      const carrier = lane.shared && window === this.window ? await this.carrierOf(lane, session) : undefined;
      if (carrier) return await carrier.dial(address, { timeoutMs, signal: options.signal }, release);
      return await dialOnSession(session, this.proxy, address, { timeoutMs, flowControlWindow: window, signal: options.signal }, {
        released: release,
        closed: () => undefined,
        flowControl: (negotiated) => { lane.shared ??= negotiated; },
      });
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
    for (const lane of this.lanes) this.forget(lane);
  }

  private get window(): number {
    return this.options.flowControlWindow ?? DEFAULT_CONNECTION_WINDOW;
  }

  /** The lane's carrier stream, opened on first use; undefined if the server would not give one. */
  private carrierOf(lane: Lane, session: http2.ClientHttp2Session): Promise<Carrier | undefined> {
    if (lane.carrier) return lane.carrier;
    const metadata = new Metadata();
    announceFlowControl(metadata, this.window);
    const opening: Promise<Carrier | undefined> = openCall(session, PROXY_PATH, metadata, CARRIER_OPEN_TIMEOUT_MS).then(({ stream, headers }) => {
      const windows = negotiateFlowControl(headers, this.window);
      if (!windows) {
        // Not the server the first answer came from: back to a stream per dial.
        lane.shared = false;
        stream.destroy();
        return undefined;
      }
      const mux = new DialingMux(stream, { name: `gRPC proxy ${this.label}`, flowControl: windows });
      mux.once('close', () => {
        if (lane.carrier === opening) lane.carrier = undefined;
      });
      return new Carrier(mux);
    }, () => {
      // The dial itself says what is wrong, on a stream of its own.
      lane.carrier = undefined;
      return undefined;
    });
    lane.carrier = opening;
    return opening;
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
      return session;
    }, (err: unknown) => {
      // The next dial tries again.
      this.forget(opening);
      throw err;
    }));
    this.lanes.push(lane);
    return lane;
  }

  /** Takes no new dials on `lane`, and closes it once its tunneled connections are done. */
  private forget(lane: Lane): void {
    this.lanes = this.lanes.filter((l) => l !== lane);
    lane.retired = true;
    lane.closeWhenIdle();
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
      lane.closeWhenIdle();
    };
  }
}
