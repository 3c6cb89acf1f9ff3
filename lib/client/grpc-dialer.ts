/**
 * Dials through the gRPC frontend (`/ProxyService/Proxy`) of a tunnel server or of the
 * reference proxy-server. Like kube-apiserver's egress selector, every dial gets its own gRPC
 * client and stream, so one tunneled connection never waits behind another, and both are
 * released when the connection closes.
 */
import * as grpc from '@grpc/grpc-js';
import { DEFAULT_CLOSE_TIMEOUT_MS, DialError, DialingMux } from '../mux/dialing-mux.js';
import type { TunnelConnection } from '../mux/tunnel-connection.js';
import type { TlsSource } from '../pki/tls-source.js';
import { mtlsChannelCredentials } from '../transport/credentials.js';
import { DEFAULT_CONNECTION_WINDOW, announceFlowControl, negotiateFlowControl } from '../transport/flow-control-metadata.js';
import { channelOptions } from '../transport/options.js';
import { PROXY_CLIENT_WINDOW } from '../transport/http2-windows.js';
import { asPacketStream, deserializePacket, serializePacket } from '../transport/services.js';
import { PacketType, type KnownPacket, type Packet } from '../wire/packet.js';
import { DEFAULT_SERVER_PORT, PROXY_PATH } from '../wire/protocol.js';
import { joinHostPort } from './host-port.js';

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
  const target = grpcTarget(proxy);
  const client = new grpc.Client(target, channelCredentials(proxy, target), channelOptions({ 'grpc-node.flow_control_window': PROXY_CLIENT_WINDOW }));
  const window = options.flowControlWindow ?? DEFAULT_CONNECTION_WINDOW;
  const metadata = new grpc.Metadata();
  announceFlowControl(metadata, window);
  const call = client.makeBidiStreamRequest<KnownPacket, Packet>(PROXY_PATH, serializePacket, deserializePacket, metadata);
  const mux = new DialingMux(asPacketStream(call), { name: `gRPC proxy ${target}` });
  // The reference server sends its headers only with its first message: never wait for them.
  call.on('metadata', (peer: grpc.Metadata) => mux.negotiateFlowControl(negotiateFlowControl(peer, window)));
  let streamError: grpc.ServiceError | undefined;
  call.once('error', (err: grpc.ServiceError) => { streamError = err; });

  const release = releaser(call, client, mux);
  mux.once('connection-closed', () => release(true));
  mux.once('close', () => release(false));
  try {
    return await mux.dial(address, { timeoutMs: options.timeoutMs, signal: options.signal });
  } catch (err) {
    release(false);
    if (streamError && err instanceof DialError && err.kind === 'closed') {
      throw new DialError(`gRPC proxy ${target} failed before answering the dial of ${address}: ${describeStatus(streamError, proxy)}`, address, 'closed');
    }
    throw err;
  }
}

/**
 * Ends the stream and drops the channel once the connection (or the dial) is over. Like the
 * reference client, the stream is cancelled as soon as the close is answered (CLOSE_RSP, or the
 * proxy's own CLOSE_REQ), so no proxy has to finish the RPC itself; until then, queued DATA and
 * our CLOSE_REQ still reach it. `flush` false: nothing is left to deliver, cancel at once.
 */
function releaser(call: grpc.ClientDuplexStream<KnownPacket, Packet>, client: grpc.Client, mux: DialingMux): (flush: boolean) => void {
  let released = false;
  let closeAnswered = false;
  let timer: NodeJS.Timeout | undefined;
  const cancel = () => {
    clearTimeout(timer);
    call.cancel();
  };
  call.on('data', (packet: Packet) => {
    if (packet.type !== PacketType.CLOSE_RSP && packet.type !== PacketType.CLOSE_REQ) return;
    closeAnswered = true;
    if (released) cancel();
  });
  call.once('status', () => clearTimeout(timer));
  return (flush) => {
    if (released) return;
    released = true;
    call.end();
    if (!flush || closeAnswered || mux.isClosed) {
      cancel();
    } else {
      // A proxy that never answers the close must not keep the socket open forever.
      timer = setTimeout(cancel, DEFAULT_CLOSE_TIMEOUT_MS);
      timer.unref();
    }
    client.close();
  };
}

/** A failed stream in words, with what to check when the proxy cannot be reached at all. */
function describeStatus(err: grpc.ServiceError, proxy: GrpcProxy): string {
  const details = err.details.replace(/\.?\s*Resolution note:\s*$/, '');
  const where = proxy.uds ? 'on this socket' : 'there, and does the CA bundle verify its certificate';
  const hint = err.code === grpc.status.UNAVAILABLE ? `; is the tunnel server running and listening ${where}?` : '';
  return `${grpc.status[err.code]}: ${details}${hint}`;
}

function channelCredentials(proxy: GrpcProxy, target: string): grpc.ChannelCredentials {
  if (proxy.uds) return grpc.credentials.createInsecure();
  if (!proxy.tls) {
    throw new Error(`gRPC proxy ${target} over TCP needs mTLS: give a client certificate, key and CA, or use the proxy's unix socket`);
  }
  return mtlsChannelCredentials(proxy.tls);
}
