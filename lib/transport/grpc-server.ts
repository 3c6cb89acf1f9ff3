/**
 * A gRPC server on node:http2 for bidi-streaming methods of packets: the agent listener and
 * the gRPC frontend. It speaks plain gRPC (any gRPC agent or client, the reference's and
 * kube-apiserver's included, connects), and unlike grpc-js it lets the packet framing write
 * DATA payloads without copying them (grpc-stream.ts) and takes its HTTP/2 windows as
 * ordinary settings.
 */
import { EventEmitter } from 'node:events';
import http2 from 'node:http2';
import { rmSync } from 'node:fs';
import type { Socket } from 'node:net';
import type { TlsSource } from '../pki/tls-source.js';
import type { Logger } from '../observe/log.js';
import type { PacketStream } from '../mux/packet-stream.js';
import { DEFAULT_MAX_MESSAGE_SIZE } from '../wire/protocol.js';
import { GrpcFramingError, GrpcPacketStream, resetStream } from './grpc-stream.js';
import { PacketDecodeError } from '../wire/codec.js';
import { GrpcStatus, Metadata, encodeGrpcMessage, keepAlive } from './grpc-metadata.js';
import type { Subscription } from 'rxjs';
import { followTlsSource } from './tls-reload.js';
import { peerIdentity, type PeerIdentity } from './peer-identity.js';

export type BidiHandler = (call: ServerCall) => void;

/** One call of a bidi-streaming method, as its handler sees it. */
export class ServerCall extends EventEmitter {
  readonly metadata: Metadata;
  private statusSent = false;
  private trailers: http2.OutgoingHttpHeaders = { 'grpc-status': String(GrpcStatus.OK) };
  private stream?: GrpcPacketStream;

  /** The client certificate's subject (mTLS listeners), or undefined. */
  readonly peerIdentity?: PeerIdentity;
  /** The client's address (`host:port`, or `unix socket`). */
  readonly peer: string;

  constructor(private readonly h2: http2.ServerHttp2Stream, rawHeaders: string[], connection: ConnectionPeer, private readonly maxMessageSize: number) {
    super();
    this.peer = connection.address;
    this.peerIdentity = connection.identity;
    this.metadata = Metadata.fromRawHeaders(rawHeaders);
    h2.on('error', () => {}); // a reset stream; 'close' follows and says what the call needs
    h2.on('wantTrailers', () => h2.sendTrailers(this.trailers));
    h2.once('close', () => {
      if (!this.statusSent) this.emit('cancelled');
    });
  }

  /** The call's packets, both ways; reading starts on first use. */
  get packets(): PacketStream {
    this.stream ??= new GrpcPacketStream(this.h2, {
      end: () => this.sendStatus(GrpcStatus.OK),
      abort: (_h2, err) => this.abort(err),
    }, this.maxMessageSize);
    return this.stream;
  }

  /** Sends the response headers with `metadata`; packets may follow. */
  sendMetadata(metadata: Metadata): void {
    if (this.h2.headersSent || this.h2.destroyed) return;
    this.h2.respond({ ':status': 200, 'content-type': 'application/grpc', ...metadata.toHeaders() }, { waitForTrailers: true });
  }

  /** Ends the call with a status: after what was written, or at once as trailers-only. */
  sendStatus(code: number, details = ''): void {
    if (this.statusSent || this.h2.destroyed) return;
    this.statusSent = true;
    const trailers: http2.OutgoingHttpHeaders = { 'grpc-status': String(code) };
    if (details) trailers['grpc-message'] = encodeGrpcMessage(details);
    if (!this.h2.headersSent) {
      this.h2.respond({ ':status': 200, 'content-type': 'application/grpc', ...trailers }, { endStream: true });
      return;
    }
    this.trailers = trailers;
    if (!this.h2.writableEnded) this.h2.end();
  }

  /** A broken message or packet gets its status; any other failure resets the stream. */
  private abort(err: Error | null): void {
    if (err instanceof GrpcFramingError && !this.h2.writableEnded) this.sendStatus(err.code, err.message);
    else if (err instanceof PacketDecodeError && !this.h2.writableEnded) this.sendStatus(GrpcStatus.INTERNAL, err.message);
    else if (!this.h2.headersSent) this.sendStatus(GrpcStatus.UNAVAILABLE, err?.message ?? 'the server closed the stream');
    else resetStream(this.h2);
  }
}

/** Who is on the other end of an HTTP/2 connection: the same for every call on it. */
interface ConnectionPeer {
  address: string;
  identity?: PeerIdentity;
}

export interface GrpcServerOptions {
  /** Server certificate and the CA client certificates must chain to, followed as they change; none serves plaintext. */
  tls?: TlsSource;
  /** Names the listener in logs, e.g. 'agents'. */
  name?: string;
  /** HTTP/2 receive window of every stream and connection (Node's default is 64 KiB). */
  receiveWindow?: number;
  maxMessageSize?: number;
  /** What one HTTP/2 connection may hold before its new calls are refused (default DEFAULT_SESSION_MEMORY_MIB). */
  maxSessionMemoryMiB?: number;
  log: Logger;
}

/**
 * What one HTTP/2 connection may hold, in MiB: nghttp2's state for its streams and the data
 * queued to send on them. Past it, Node refuses the connection's new streams
 * (ENHANCE_YOUR_CALM) while the open ones go on, so a peer that opens calls without end, or
 * stops reading while they pile up data, is held to this much. Node's default (10) is less
 * than what one agent's window lets the server queue for it (a 16 MiB HTTP/2 window), and
 * a client with a thousand calls on one connection holds a few MiB of stream state alone;
 * 256 leaves both ample room and still bounds the connection.
 */
export const DEFAULT_SESSION_MEMORY_MIB = 256;

export class GrpcServer {
  private readonly server: http2.Http2Server | http2.Http2SecureServer;
  private readonly handlers = new Map<string, BidiHandler>();
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  /** Read once per connection: a client that keeps one open opens many calls on it. */
  private readonly peers = new WeakMap<http2.Http2Session, ConnectionPeer>();
  private readonly maxMessageSize: number;
  private readonly tlsFollower?: Subscription;

  constructor(private readonly options: GrpcServerOptions) {
    this.maxMessageSize = options.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE;
    const settings: http2.Settings = options.receiveWindow ? { initialWindowSize: options.receiveWindow } : {};
    const common = { settings, maxSessionMemory: options.maxSessionMemoryMiB ?? DEFAULT_SESSION_MEMORY_MIB };
    if (options.tls) {
      const { key, cert, ca } = options.tls.current();
      const secure = http2.createSecureServer({ ...common, key, cert, ca, requestCert: true, rejectUnauthorized: true });
      secure.on('tlsClientError', (err: Error, socket: Socket) => {
        options.log.debug('TLS handshake failed', { peer: `${socket.remoteAddress}:${socket.remotePort}`, reason: err.message });
      });
      this.tlsFollower = followTlsSource(secure, options.tls, options.name ?? 'gRPC', options.log);
      this.server = secure;
    } else {
      this.server = http2.createServer(common);
    }
    this.server.on('connection', (socket: Socket) => socket.setNoDelay?.(true));
    this.server.on('session', (session: http2.ServerHttp2Session) => this.adopt(session));
    this.server.on('sessionError', (err: Error) => options.log.debug('HTTP/2 session failed', { reason: err.message }));
    this.server.on('stream', (h2: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, _flags: number, rawHeaders: string[]) => this.dispatch(h2, headers, rawHeaders));
  }

  /** Serves `path` (e.g. /AgentService/Connect) with `handler`. */
  handle(path: string, handler: BidiHandler): void {
    this.handlers.set(path, handler);
  }

  /** Listens on host:port (port 0 picks one) or a unix socket path; gives the port, or 0. */
  async listen(where: { host: string; port: number } | { path: string }): Promise<number> {
    if ('path' in where) rmSync(where.path, { force: true });
    await new Promise<void>((resolve, reject) => {
      const fail = (err: Error) => reject(new Error(`cannot listen on ${'path' in where ? where.path : `${where.host}:${where.port}`}: ${err.message}`));
      this.server.once('error', fail);
      this.server.listen(where, () => {
        this.server.off('error', fail);
        resolve();
      });
    });
    const address = this.server.address();
    return typeof address === 'object' && address ? address.port : 0;
  }

  /**
   * Tells every connected client to open no new streams on its connection (HTTP/2 GOAWAY)
   * while the open ones go on: a client that keeps its connection (a GrpcChannel) takes its
   * next dials to a new connection, through a balancer to another server.
   */
  goAway(): void {
    for (const session of this.sessions) if (!session.closed && !session.destroyed) session.close();
  }

  /** Stops listening and closes every session at once. */
  close(): void {
    this.tlsFollower?.unsubscribe();
    this.server.close();
    for (const session of this.sessions) session.destroy();
    this.sessions.clear();
  }

  private adopt(session: http2.ServerHttp2Session): void {
    this.sessions.add(session);
    session.on('error', (err: Error) => this.options.log.debug('HTTP/2 session error', { reason: err.message }));
    session.once('close', () => this.sessions.delete(session));
    keepAlive(session, (reason) => this.options.log.info('closing an HTTP/2 connection', { reason }));
    const window = this.options.receiveWindow;
    if (window) {
      // After the settings exchange, so the WINDOW_UPDATE does not race it.
      session.once('remoteSettings', () => {
        try {
          session.setLocalWindowSize(window);
        } catch (err) {
          this.options.log.debug('cannot raise an HTTP/2 connection window', { reason: (err as Error).message });
        }
      });
    }
  }

  private peerOf(session: http2.Http2Session | undefined): ConnectionPeer {
    const known = session && this.peers.get(session);
    if (known) return known;
    const socket = session?.socket;
    const peer: ConnectionPeer = {
      address: socket?.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix socket',
      identity: peerIdentity(socket),
    };
    if (session) this.peers.set(session, peer);
    return peer;
  }

  private dispatch(h2: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, rawHeaders: string[]): void {
    const contentType = String(headers['content-type'] ?? '');
    if (headers[':method'] !== 'POST' || !/^application\/grpc(?:$|[+;])/.test(contentType)) {
      if (!h2.headersSent) h2.respond({ ':status': 415, 'content-type': 'text/plain' }, { endStream: true });
      return;
    }
    const call = new ServerCall(h2, rawHeaders, this.peerOf(h2.session), this.maxMessageSize);
    const path = headers[':path'] ?? '';
    const encoding = headers['grpc-encoding'];
    if (encoding !== undefined && encoding !== 'identity') {
      call.sendStatus(GrpcStatus.UNIMPLEMENTED, `grpc-encoding ${String(encoding)} is not supported; send identity`);
      return;
    }
    const handler = this.handlers.get(path);
    if (!handler) {
      call.sendStatus(GrpcStatus.UNIMPLEMENTED, `unknown method ${path}`);
      return;
    }
    try {
      handler(call);
    } catch (err) {
      this.options.log.warn('a stream handler failed', { path, peer: call.peer, reason: (err as Error).message });
      call.sendStatus(GrpcStatus.INTERNAL, (err as Error).message);
    }
  }
}
