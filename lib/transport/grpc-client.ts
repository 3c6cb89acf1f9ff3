/**
 * The client end of gRPC on node:http2 (see grpc-server.ts): an mTLS connection to a gRPC
 * server and bidi-streaming calls of packets on it. The agent uses it for its streams to
 * the tunnel server, ours or the reference's.
 */
import http2 from 'node:http2';
import { isIP } from 'node:net';
import tls from 'node:tls';
import type { TlsMaterial } from '../pki/tls-source.js';
import { DEFAULT_MAX_MESSAGE_SIZE } from '../wire/protocol.js';
import { GrpcPacketStream } from './grpc-stream.js';
import { GrpcStatus, Metadata, decodeGrpcMessage, keepAlive, statusName } from './grpc-metadata.js';
import { KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS } from './options.js';

const { NGHTTP2_CANCEL } = http2.constants;
const USER_AGENT = 'tke-anp-tunnel';

export interface GrpcConnectOptions {
  /** host:port of the server. */
  target: string;
  tls: TlsMaterial;
  /** Name the server certificate must hold (default: the host of `target`). */
  serverName?: string;
  /** HTTP/2 receive window of the connection and its streams (Node's default is 64 KiB). */
  receiveWindow?: number;
  timeoutMs: number;
  /** Told when keepalive finds the server gone; the session is destroyed then. */
  onDead?: (reason: string) => void;
}

function splitHostPort(target: string): { host: string; port: string } {
  const match = /^\[([^\]]+)\]:(\d+)$/.exec(target) ?? /^([^:]+):(\d+)$/.exec(target);
  if (!match) throw new Error(`"${target}" is not host:port`);
  return { host: match[1]!, port: match[2]! };
}

/** Opens an mTLS HTTP/2 connection, resolved once the TLS handshake and settings are done. */
export function connect(o: GrpcConnectOptions): Promise<http2.ClientHttp2Session> {
  const { host, port } = splitHostPort(o.target);
  const name = o.serverName ?? host;
  const authority = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  const session = http2.connect(`https://${authority}`, {
    settings: { enablePush: false, ...(o.receiveWindow ? { initialWindowSize: o.receiveWindow } : {}) },
    maxSessionMemory: Number.MAX_SAFE_INTEGER,
    createConnection: () => {
      const socket = tls.connect({
        host, port: Number(port), ...o.tls, ALPNProtocols: ['h2'],
        // SNI takes names only; an IP is checked against the certificate's IP addresses.
        ...(isIP(name) ? {} : { servername: name }),
        checkServerIdentity: (_host, cert) => tls.checkServerIdentity(name, cert),
      });
      socket.setNoDelay(true);
      return socket;
    },
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`no HTTP/2 connection within ${o.timeoutMs} ms`)), o.timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      session.destroy();
      reject(err);
    };
    session.once('error', fail);
    session.once('remoteSettings', () => {
      clearTimeout(timer);
      session.off('error', fail);
      session.on('error', () => {}); // after this, failures surface as the streams closing
      if (o.receiveWindow) session.setLocalWindowSize(o.receiveWindow);
      keepAlive(session, KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS, (reason) => o.onDead?.(reason));
      resolve(session);
    });
  });
}

/** The server ended the call with a status other than OK. */
export class GrpcCallError extends Error {
  constructor(readonly code: number, readonly details: string) {
    super(`${statusName(code)}: ${details || 'no details'}`);
  }
}

function statusOf(headers: http2.IncomingHttpHeaders): GrpcCallError | undefined {
  const raw = headers['grpc-status'];
  if (raw === undefined) return undefined;
  const code = Number(raw);
  if (code === GrpcStatus.OK) return undefined;
  return new GrpcCallError(code, decodeGrpcMessage(String(headers['grpc-message'] ?? '')));
}

/**
 * Starts a bidi-streaming call and waits for the response headers: the packet stream and
 * the server's metadata, or the server's refusal as a GrpcCallError.
 */
export function openCall(session: http2.ClientHttp2Session, path: string, metadata: Metadata, timeoutMs: number): Promise<{ stream: GrpcPacketStream; headers: Metadata }> {
  const h2 = session.request({
    ':method': 'POST',
    ':path': path,
    'content-type': 'application/grpc',
    te: 'trailers',
    'user-agent': USER_AGENT,
    'grpc-accept-encoding': 'identity',
    ...metadata.toHeaders(),
  });
  const stream = new GrpcPacketStream(h2, {
    end: (s) => s.end(),
    abort: (s) => s.close(NGHTTP2_CANCEL),
  }, DEFAULT_MAX_MESSAGE_SIZE);
  // Errors before the headers reject below; later ones reach whoever reads the stream.
  stream.on('error', () => {});
  h2.on('trailers', (trailers: http2.IncomingHttpHeaders) => {
    const err = statusOf(trailers);
    if (err) stream.destroy(err);
  });
  return new Promise((resolve, reject) => {
    const fail = (err: Error) => {
      clearTimeout(timer);
      stream.off('close', closed);
      stream.destroy();
      reject(err);
    };
    const closed = () => fail(stream.errored ?? new Error('the stream closed before the response headers'));
    const timer = setTimeout(() => fail(new Error(`no response headers within ${timeoutMs} ms`)), timeoutMs);
    stream.once('close', closed);
    h2.once('response', (headers: http2.IncomingHttpHeaders) => {
      const status = headers[':status'];
      const refusal = Number(status) !== 200 ? new Error(`HTTP status ${status} (is this a gRPC server?)`) : statusOf(headers);
      if (refusal) {
        fail(refusal);
        return;
      }
      clearTimeout(timer);
      stream.off('close', closed);
      resolve({ stream, headers: Metadata.fromHeaders(headers) });
    });
  });
}
