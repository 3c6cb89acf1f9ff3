/**
 * Dials through the gRPC frontend (`/ProxyService/Proxy`) of a tunnel server or of the
 * reference proxy-server. Like kube-apiserver's egress selector, every dial gets its own gRPC
 * client and stream, so one tunneled connection never waits behind another, and both are
 * released when the connection closes.
 */
import type http2 from 'node:http2';
import { DEFAULT_CLOSE_TIMEOUT_MS, DialError, DialingMux } from '../mux/dialing-mux.js';
import type { TunnelConnection } from '../mux/tunnel-connection.js';
import type { TlsSource } from '../pki/tls-source.js';
import { DEFAULT_CONNECTION_WINDOW, announceFlowControl, negotiateFlowControl } from '../transport/flow-control-metadata.js';
import { PROXY_CLIENT_WINDOW } from '../transport/http2-windows.js';
import { GrpcCallError, closeSession, connect, startCall } from '../transport/grpc-client.js';
import { GrpcStatus, Metadata, statusName } from '../transport/grpc-metadata.js';
import type { GrpcPacketStream } from '../transport/grpc-stream.js';
import { PacketType, type Packet } from '../wire/packet.js';
import { DEFAULT_SERVER_PORT, PROXY_PATH } from '../wire/protocol.js';
import { joinHostPort } from '../transport/host-port.js';

/** How long connecting to the proxy (TCP or unix socket, TLS, HTTP/2 settings) may take. */
const CONNECT_TIMEOUT_MS = 10_000;
const SESSION_CLOSE_GRACE_MS = 1_000;

export interface GrpcProxy {
  /** A unix socket: plain gRPC, no TLS (host and port are then ignored). */
  uds?: string;
  host?: string;
  port?: number;
  /** Required over TCP: the client certificate and the CA that signs the proxy's certificate. */
  tls?: TlsSource;
}

export interface GrpcDialOptions {
  /** How long to wait for the proxy's DIAL_RSP (reference: 30 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Receive window per connection announced to the proxy (flow-control extension). */
  flowControlWindow?: number;
}

/** The gRPC target: `unix:///abs/path`, `unix:relative/path` or `host:port`. */
export function grpcTarget(proxy: GrpcProxy): string {
  if (proxy.uds) return proxy.uds.startsWith('/') ? `unix://${proxy.uds}` : `unix:${proxy.uds}`;
  return joinHostPort(proxy.host ?? '127.0.0.1', proxy.port ?? DEFAULT_SERVER_PORT);
}

/**
 * Opens a Proxy stream and dials `address` (e.g. `c1:443`) over it. A refused dial rejects
 * with a DialError whose message is the proxy's text, e.g. `No agent available`.
 */
export async function dialGrpc(proxy: GrpcProxy, address: string, options: GrpcDialOptions = {}): Promise<TunnelConnection> {
  const session = await connectProxy(proxy, address);
  // The connection is this dial's alone: close it with the stream, and give a peer that
  // keeps its end open only a moment.
  return dialOnSession(session, proxy, address, options, {
    // What is left (the close's answer) must not keep the caller's process alive.
    released: () => session.unref(),
    closed: () => closeSession(session, SESSION_CLOSE_GRACE_MS),
  });
}

/** The HTTP/2 connection to the proxy, or a DialError that says what failed on the way. */
export async function connectProxy(proxy: GrpcProxy, address: string, keepaliveMs?: number): Promise<http2.ClientHttp2Session> {
  const target = grpcTarget(proxy);
  if (!proxy.uds && !proxy.tls) {
    throw new Error(`gRPC proxy ${target} over TCP needs mTLS: give a client certificate, key and CA, or use the proxy's unix socket`);
  }
  try {
    return await connect({
      target: proxy.uds ? { uds: proxy.uds } : target,
      tls: proxy.tls?.current(),
      receiveWindow: PROXY_CLIENT_WINDOW,
      timeoutMs: CONNECT_TIMEOUT_MS,
      keepaliveMs,
    });
  } catch (err) {
    throw proxyFailure(proxy, address, err as Error);
  }
}

function proxyFailure(proxy: GrpcProxy, address: string, err: Error): DialError {
  return new DialError(`gRPC proxy ${grpcTarget(proxy)} failed before answering the dial of ${address}: ${describeFailure(err, proxy)}`, address, 'closed');
}

export interface StreamHooks {
  released: () => void;
  closed: () => void;
  /** Called with the server's answer to our flow-control announcement, once its headers came. */
  flowControl?: (negotiated: boolean) => void;
}

/**
 * Dials `address` on a Proxy stream of its own on `session`: one HEADERS frame and one
 * DIAL_REQ. `hooks.released` runs once the dial failed or the tunneled connection closed
 * (only the close's answer may still come), `hooks.closed` once the stream is over.
 */
export async function dialOnSession(
  session: http2.ClientHttp2Session,
  proxy: GrpcProxy,
  address: string,
  options: GrpcDialOptions,
  hooks: StreamHooks,
): Promise<TunnelConnection> {
  const window = options.flowControlWindow ?? DEFAULT_CONNECTION_WINDOW;
  const metadata = new Metadata();
  announceFlowControl(metadata, window);
  const { stream, headers } = startCall(session, PROXY_PATH, metadata);
  const mux = new DialingMux(stream, { name: `gRPC proxy ${grpcTarget(proxy)}` });
  // The reference server sends its headers only with its first message: never wait for them.
  headers.then((peer) => {
    const windows = negotiateFlowControl(peer, window);
    mux.negotiateFlowControl(windows);
    hooks.flowControl?.(windows !== undefined);
  }, () => undefined);
  let streamError: Error | undefined;
  stream.once('error', (err: Error) => { streamError = err; });
  stream.once('close', hooks.closed);

  const release = releaser(stream, mux, hooks.released);
  mux.once('connection-closed', () => release(true));
  mux.once('close', () => release(false));
  try {
    return await mux.dial(address, { timeoutMs: options.timeoutMs, signal: options.signal });
  } catch (err) {
    release(false);
    if (streamError && err instanceof DialError && err.kind === 'closed') throw proxyFailure(proxy, address, streamError);
    throw err;
  }
}

/**
 * Ends the stream once the tunneled connection (or the dial) is over. Like the reference
 * client, the stream is cancelled as soon as the close is answered (CLOSE_RSP, or the
 * proxy's own CLOSE_REQ), so no proxy has to finish the RPC itself; until then, queued DATA
 * and our CLOSE_REQ still reach it. `flush` false: nothing is left to deliver, cancel at once.
 */
function releaser(stream: GrpcPacketStream, mux: DialingMux, released: () => void): (flush: boolean) => void {
  let done = false;
  let closeAnswered = false;
  let timer: NodeJS.Timeout | undefined;
  const cancel = () => {
    clearTimeout(timer);
    stream.destroy();
  };
  stream.on('data', (packet: Packet) => {
    if (packet.type !== PacketType.CLOSE_RSP && packet.type !== PacketType.CLOSE_REQ) return;
    closeAnswered = true;
    if (done) cancel();
  });
  stream.once('close', () => clearTimeout(timer));
  return (flush) => {
    if (done) return;
    done = true;
    released();
    if (stream.writable) stream.end();
    if (!flush || closeAnswered || mux.isClosed) {
      cancel();
    } else {
      // A proxy that never answers the close must not keep the stream open forever.
      timer = setTimeout(cancel, DEFAULT_CLOSE_TIMEOUT_MS);
      timer.unref();
    }
  };
}

/** A failed stream in words, with what to check when the proxy cannot be reached at all. */
function describeFailure(err: Error, proxy: GrpcProxy): string {
  const where = proxy.uds ? 'on this socket' : 'there, and does the CA bundle verify its certificate';
  const hint = `; is the tunnel server running and listening ${where}?`;
  if (err instanceof GrpcCallError) return `${statusName(err.code)}: ${err.details}${err.code === GrpcStatus.UNAVAILABLE ? hint : ''}`;
  return `${statusName(GrpcStatus.UNAVAILABLE)}: ${err.message}${hint}`;
}
