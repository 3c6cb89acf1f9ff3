/**
 * In-process stand-ins for the tunnel server's frontends and for targets, for the client
 * tests: an HTTP-CONNECT proxy (mTLS TCP or unix socket) that dials 127.0.0.1 directly, and a
 * gRPC ProxyService that accepts dials with an AcceptingMux, as the real frontend does. All
 * listen on 127.0.0.1 or unix sockets in temp dirs.
 */
import * as grpc from '@grpc/grpc-js';
import { once } from 'node:events';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { AcceptingMux } from '../../lib/mux/index.js';
import type { LocalPkiPaths } from '../../lib/pki/local-pki.js';
import { localPkiTlsSource } from '../../lib/pki/tls-source.js';
import { announceFlowControl, negotiateFlowControl } from '../../lib/transport/flow-control-metadata.js';
import { splitHostPort } from '../../lib/transport/host-port.js';
import { asPacketStream, proxyServiceDefinition } from './grpc-services.js';
import { dialRequest, type DialRequestPacket, type KnownPacket } from '../../lib/wire/packet.js';
import { ERR_NO_AGENT } from '../../lib/wire/protocol.js';

const LOCAL_HOSTS = new Set(['127.0.0.1', 'localhost']);

export interface Listening {
  port: number;
  close(): Promise<void>;
}

/** Listens on 127.0.0.1:0 (or the unix socket `path`) and destroys open sockets on close. */
async function listen(server: net.Server, path?: string): Promise<Listening> {
  const sockets = new Set<net.Socket>();
  const track = (socket: net.Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  };
  server.on('connection', track);
  server.on('secureConnection', track);
  if (path) server.listen(path);
  else server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : 0,
    close: () => new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => resolve());
    }),
  };
}

/** Dials 127.0.0.1 targets; any other host gets the server's "no agent" text. */
export const dialLocal = (request: DialRequestPacket, _signal?: AbortSignal): Promise<net.Socket> => new Promise((resolve, reject) => {
  const target = splitHostPort(request.address);
  if (!target) {
    reject(new Error(`bad address ${request.address}`));
    return;
  }
  const { host, port } = target;
  if (!LOCAL_HOSTS.has(host)) {
    reject(new Error(ERR_NO_AGENT));
    return;
  }
  const socket = net.connect(port, '127.0.0.1');
  socket.once('connect', () => resolve(socket));
  socket.once('error', reject);
});

export function echoTarget(): Promise<Listening> {
  return listen(net.createServer((socket) => {
    socket.on('error', () => undefined);
    socket.pipe(socket);
  }));
}

/** Answers every request with `<name> <METHOD> <url>`; paths under /hang never answer. */
export function httpTarget(name: string): Promise<Listening> {
  return listen(http.createServer((req, res) => {
    if (req.url?.startsWith('/hang')) return;
    res.end(`${name} ${req.method} ${req.url}`);
  }));
}

/** An https target with the local PKI's server certificate (names localhost and 127.0.0.1). */
export function httpsTarget(pki: LocalPkiPaths, handler: http.RequestListener): Promise<Listening> {
  return listen(https.createServer({ key: readFileSync(pki.serverKey), cert: readFileSync(pki.serverCert) }, handler));
}

export interface ConnectRefusal {
  status: number;
  message: string;
  body: string;
  /** Without Content-Length the body ends when the proxy closes. */
  contentLength?: boolean;
}

export interface FakeConnectProxyOptions {
  /** mTLS with the local PKI's server certificate, requiring a client certificate of its CA. */
  pki?: LocalPkiPaths;
  /** A plain unix socket instead. */
  path?: string;
  refuse?: ConnectRefusal;
  /** Bytes written together with the 200, before anything from the target. */
  early?: Buffer;
  /** Accept CONNECT but never answer. */
  silent?: boolean;
}

export interface FakeConnectProxy extends Listening {
  /** The request-targets of every CONNECT received. */
  addresses: string[];
}

export async function fakeConnectProxy(options: FakeConnectProxyOptions): Promise<FakeConnectProxy> {
  const server = options.pki
    ? https.createServer({
      key: readFileSync(options.pki.serverKey),
      cert: readFileSync(options.pki.serverCert),
      ca: readFileSync(options.pki.caCert),
      requestCert: true,
      rejectUnauthorized: true,
    })
    : http.createServer();
  const addresses: string[] = [];
  server.on('connect', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    addresses.push(req.url ?? '');
    socket.on('error', () => undefined);
    if (options.silent) return;
    const refusal = options.refuse;
    if (refusal) {
      const length = refusal.contentLength === false ? '' : `Content-Length: ${Buffer.byteLength(refusal.body)}\r\n`;
      socket.end(`HTTP/1.1 ${refusal.status} ${refusal.message}\r\nContent-Type: text/plain\r\n${length}Connection: close\r\n\r\n${refusal.body}`);
      return;
    }
    dialLocal(dialRequest(req.url ?? '', 0n), new AbortController().signal).then((target) => {
      socket.write(Buffer.concat([Buffer.from('HTTP/1.1 200 Connection Established\r\n\r\n'), options.early ?? Buffer.alloc(0)]));
      if (head.length > 0) target.write(head);
      // Plain pipes: an https server's socket already has listeners enough for splice to trip
      // the MaxListeners warning.
      target.on('error', () => socket.destroy());
      socket.on('close', () => target.destroy());
      socket.pipe(target).pipe(socket);
    }, (err: Error) => {
      socket.end(`HTTP/1.1 502 Bad Gateway\r\nContent-Length: ${Buffer.byteLength(err.message)}\r\nConnection: close\r\n\r\n${err.message}`);
    });
  });
  const listening = await listen(server, options.path);
  return { ...listening, addresses };
}

export interface FakeGrpcProxyOptions {
  /** Listen on this unix socket (insecure), or on 127.0.0.1 with mTLS from `pki`. */
  uds?: string;
  pki?: LocalPkiPaths;
  /** Announce this per-connection window in the response headers, sent at once; otherwise
   * send no extension and let grpc-js send headers with the first message, as the reference does. */
  window?: number;
}

export interface FakeGrpcProxy extends Listening {
  /** One accepting mux per Proxy stream. */
  muxes: AcceptingMux[];
  /** The request metadata of every Proxy stream. */
  metadata: grpc.Metadata[];
}

export async function fakeGrpcProxy(options: FakeGrpcProxyOptions): Promise<FakeGrpcProxy> {
  const server = new grpc.Server();
  const muxes: AcceptingMux[] = [];
  const metadata: grpc.Metadata[] = [];
  server.addService(proxyServiceDefinition, {
    Proxy: (call: grpc.ServerDuplexStream<KnownPacket, KnownPacket>) => {
      metadata.push(call.metadata);
      let flowControl;
      if (options.window !== undefined) {
        flowControl = negotiateFlowControl(call.metadata, options.window);
        const headers = new grpc.Metadata();
        announceFlowControl(headers, options.window);
        call.sendMetadata(headers);
      }
      call.on('error', () => undefined);
      muxes.push(new AcceptingMux(asPacketStream(call), dialLocal, { name: 'fake-frontend', flowControl }));
    },
  });
  let credentials = grpc.ServerCredentials.createInsecure();
  if (options.pki) {
    const { ca, cert, key } = (await localPkiTlsSource(options.pki, 'server')).current();
    credentials = grpc.ServerCredentials.createSsl(ca, [{ private_key: key, cert_chain: cert }], true);
  }
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(options.uds ? `unix://${options.uds}` : '127.0.0.1:0', credentials, (err, bound) => (err ? reject(err) : resolve(bound)));
  });
  return {
    port,
    muxes,
    metadata,
    close: async () => {
      server.forceShutdown();
    },
  };
}
