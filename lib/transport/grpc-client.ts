/**
 * The client end of gRPC on node:http2 (see grpc-server.ts): a connection to a gRPC server
 * (mTLS over TCP, or plain on a unix socket) and bidi-streaming calls of packets on it. The
 * agent uses it for its streams to the tunnel server and lib/client for the ProxyService,
 * against our server or the reference's.
 */
import http2 from 'node:http2';
import net, { isIP } from 'node:net';
import tls from 'node:tls';
import type { TlsMaterial } from '../pki/tls-source.js';
import { DEFAULT_MAX_MESSAGE_SIZE } from '../wire/protocol.js';
import { GrpcPacketStream, resetStream } from './grpc-stream.js';
import { joinHostPort, splitHostPort } from './host-port.js';
import { connectTls } from './tls-dial.js';
import { GrpcStatus, KEEPALIVE, Metadata, decodeGrpcMessage, keepAlive, statusName } from './grpc-metadata.js';

const USER_AGENT = 'tke-anp-tunnel';

export interface GrpcConnectOptions {
  /** host:port of the server (with `tls`), or the path of its unix socket (without). */
  target: string | { uds: string };
  tls?: TlsMaterial;
  /** Name the server certificate must hold (default: the host of `target`). */
  serverName?: string;
  /** HTTP/2 receive window of the connection and its streams (Node's default is 64 KiB). */
  receiveWindow?: number;
  timeoutMs: number;
  /** Told when keepalive finds the server gone; the session is destroyed then. */
  onDead?: (reason: string) => void;
  /** Keepalive ping interval (see KEEPALIVE): what the server's enforcement policy allows; default a frontend client's. */
  keepaliveMs?: number;
}

function tlsSocket(host: string, port: number, material: TlsMaterial, serverName?: string): tls.TLSSocket {
  const name = serverName ?? host;
  const socket = connectTls({
    host, port, ...material, ALPNProtocols: ['h2'],
    // SNI takes names only; an IP is checked against the certificate's IP addresses.
    ...(isIP(name) ? {} : { servername: name }),
    checkServerIdentity: (_host, cert) => tls.checkServerIdentity(name, cert),
  });
  socket.setNoDelay(true);
  return socket;
}

/** Opens an HTTP/2 connection, resolved once the handshakes and the settings are done. */
export function connect(o: GrpcConnectOptions): Promise<http2.ClientHttp2Session> {
  const { target, tls: material } = o;
  let authority: string;
  let createConnection: () => net.Socket;
  if (typeof target === 'string') {
    if (!material) return Promise.reject(new Error(`gRPC over TCP to ${target} needs mTLS: a client certificate, key and CA`));
    const hostPort = splitHostPort(target);
    if (!hostPort) return Promise.reject(new Error(`"${target}" is not host:port`));
    const { host, port } = hostPort;
    authority = `https://${joinHostPort(host, port)}`;
    createConnection = () => tlsSocket(host, port, material, o.serverName);
  } else {
    authority = 'http://localhost';
    createConnection = () => net.connect(target.uds);
  }
  const session = http2.connect(authority, {
    settings: { enablePush: false, ...(o.receiveWindow ? { initialWindowSize: o.receiveWindow } : {}) },
    maxSessionMemory: Number.MAX_SAFE_INTEGER,
    createConnection,
  });
  // Failures before the settings reject below; later ones surface as the streams closing.
  // A session can report more than one error (its socket's, then its own): none may go
  // unhandled.
  session.on('error', () => {});
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      session.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new Error(`no HTTP/2 connection within ${o.timeoutMs} ms`)), o.timeoutMs);
    session.once('error', fail);
    session.once('close', () => fail(new Error('the connection closed before the HTTP/2 settings arrived')));
    session.once('remoteSettings', () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      session.off('error', fail);
      if (o.receiveWindow) session.setLocalWindowSize(o.receiveWindow);
      keepAlive(session, (reason) => o.onDead?.(reason), o.keepaliveMs ?? KEEPALIVE.frontendMs);
      resolve(session);
    });
  });
}

/** Closes a session once its streams are done; a peer that holds it open gets `graceMs`. */
export function closeSession(session: http2.ClientHttp2Session, graceMs: number): void {
  session.close();
  setTimeout(() => session.destroy(), graceMs).unref();
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
 * Starts a bidi-streaming call: packets may be written at once. `headers` settles with the
 * server's metadata, or with its refusal as a GrpcCallError (a reference server sends its
 * headers only with its first message, so a caller need not wait for them).
 */
export function startCall(session: http2.ClientHttp2Session, path: string, metadata: Metadata): { stream: GrpcPacketStream; headers: Promise<Metadata> } {
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
    abort: (s) => resetStream(s),
  }, DEFAULT_MAX_MESSAGE_SIZE);
  h2.on('trailers', (trailers: http2.IncomingHttpHeaders) => {
    const err = statusOf(trailers);
    if (err) stream.destroy(err);
  });
  const headers = new Promise<Metadata>((resolve, reject) => {
    const closed = () => reject(stream.errored ?? new Error('the stream closed before the response headers'));
    stream.once('close', closed);
    h2.once('response', (response: http2.IncomingHttpHeaders) => {
      stream.off('close', closed);
      const status = response[':status'];
      const refusal = Number(status) !== 200 ? new Error(`HTTP status ${String(status)} (is this a gRPC server?)`) : statusOf(response);
      if (refusal) {
        stream.destroy(refusal);
        reject(refusal);
      } else {
        resolve(Metadata.fromHeaders(response));
      }
    });
  });
  headers.catch(() => undefined); // a caller that does not wait learns it from the stream
  return { stream, headers };
}

/** Starts a call and waits for the response headers: the stream and the server's metadata. */
export async function openCall(session: http2.ClientHttp2Session, path: string, metadata: Metadata, timeoutMs: number): Promise<{ stream: GrpcPacketStream; headers: Metadata }> {
  const { stream, headers } = startCall(session, path, metadata);
  // Errors before the headers reject here; later ones reach whoever reads the stream (and
  // one between the headers and its first reader must not go unhandled).
  stream.on('error', () => undefined);
  let timer: NodeJS.Timeout | undefined;
  try {
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no response headers within ${timeoutMs} ms`)), timeoutMs);
    });
    return { stream, headers: await Promise.race([headers, timeout]) };
  } catch (err) {
    stream.destroy();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
