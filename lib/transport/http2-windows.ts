/**
 * HTTP/2 flow-control windows of the gRPC transport.
 *
 * Node's HTTP/2 starts every stream and connection with a 64 KiB window, which caps one
 * stream at 64 KiB per round trip: about 1.3 MB/s on a 50 ms link. The agent stream's busy
 * direction is agent -> server (responses, logs, watches), so the agent listener raises its
 * receive windows. grpc-js ignores `grpc-node.flow_control_window` on the server side
 * (grpc/grpc-node#3058 proposes the same fix as here), so we set the initial stream window
 * in the HTTP/2 settings grpc-js passes to each listener, and raise the connection window
 * of every session as it opens. Both touch grpc-js internals, checked at run time: if they
 * ever change, we log it and keep the defaults rather than fail.
 *
 * Only one direction of a connection may have a large window. A Node HTTP/2 session reads
 * nothing from its socket while one of its writes is pending (nodejs/node#29399), so when
 * both ends may have more in flight than the kernel's socket buffers hold, both block in a
 * write and never read again. The sender of the small-window direction always completes
 * its writes, keeps reading, and so the connection cannot deadlock. That is why our agent
 * carries server -> agent traffic on a second connection (MD_SPLIT_STREAMS): each
 * connection is busy one way only, and both directions get a large window.
 */
import type * as grpc from '@grpc/grpc-js';
import type http2 from 'node:http2';
import { logger } from '../observe/log.js';

/** Receive window of the agent listener: how much an agent may have in flight to us. */
export const AGENT_LISTENER_WINDOW = 16 * 1024 * 1024;

/**
 * Receive window of an agent's downlink connection, which carries only server -> agent
 * packets (see MD_SPLIT_STREAMS), so the agent writes nothing big on it.
 */
export const DOWNLINK_WINDOW = 16 * 1024 * 1024;

/**
 * Receive window of a ProxyService client: its busy direction is server -> client, so the
 * client's side is the large one and the frontend server keeps Node's default.
 */
export const PROXY_CLIENT_WINDOW = 16 * 1024 * 1024;

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
    listener.on('connection', (socket: import('node:net').Socket) => socket.setNoDelay?.(true));
    // As grpc-js's client does: once the peer's settings are in, so the WINDOW_UPDATE
    // follows the settings exchange instead of racing it.
    listener.on('session', (session: http2.ServerHttp2Session) => {
      session.once('remoteSettings', () => {
        try {
          session.setLocalWindowSize(windowBytes);
        } catch (err) {
          log.debug('cannot raise an HTTP/2 connection window', { err });
        }
      });
    });
  }
}
