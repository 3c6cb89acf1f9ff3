/**
 * HTTP/2 flow-control windows of the gRPC transport.
 *
 * Node's HTTP/2 starts every stream and connection with a 64 KiB window, which caps one
 * stream at 64 KiB per round trip: about 1.3 MB/s on a 50 ms link. grpc-js raises both
 * windows on the client side with `grpc-node.flow_control_window`, but its server ignores
 * that option (grpc/grpc-node#3058 proposes the same fix as here). So for our servers we
 * set the initial stream window in the HTTP/2 settings grpc-js passes to each listener,
 * and raise the connection window of every session as it opens. Both touch grpc-js
 * internals, checked at run time: if they ever change, we log it and keep the defaults
 * rather than fail.
 */
import type * as grpc from '@grpc/grpc-js';
import type http2 from 'node:http2';
import { logger } from '../observe/log.js';

/** Default window for both ends of every gRPC stream and connection we open or accept. */
export const DEFAULT_HTTP2_WINDOW = 16 * 1024 * 1024;

interface GrpcServerInternals {
  commonServerOptions?: http2.ServerOptions;
  http2Servers?: Map<http2.Http2Server | http2.Http2SecureServer, unknown>;
}

const widened = new WeakSet<object>();
const log = logger('transport');

/** Call before the first bindAsync: the stream window every listener advertises. */
export function setServerStreamWindow(server: grpc.Server, windowBytes: number): void {
  const internals = server as unknown as GrpcServerInternals;
  if (!internals.commonServerOptions || typeof internals.commonServerOptions !== 'object') {
    log.warn('cannot raise the HTTP/2 stream window of the gRPC server (grpc-js internals changed); long-distance throughput stays capped');
    return;
  }
  internals.commonServerOptions.settings = { ...internals.commonServerOptions.settings, initialWindowSize: windowBytes };
}

/** Call after each bindAsync: raises the connection window of every session from now on. */
export function raiseServerConnectionWindows(server: grpc.Server, windowBytes: number): void {
  const listeners = (server as unknown as GrpcServerInternals).http2Servers;
  if (!(listeners instanceof Map)) {
    log.warn('cannot raise the HTTP/2 connection window of the gRPC server (grpc-js internals changed); long-distance throughput stays capped');
    return;
  }
  for (const listener of listeners.keys()) {
    if (widened.has(listener)) continue;
    widened.add(listener);
    listener.on('session', (session: http2.ServerHttp2Session) => {
      try {
        session.setLocalWindowSize(windowBytes);
      } catch (err) {
        log.debug('cannot raise an HTTP/2 connection window', { err });
      }
    });
  }
}
