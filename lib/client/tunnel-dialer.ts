/**
 * One dial function for either frontend of the tunnel server, so callers (the http agents,
 * tunnel-client) do not care whether the tunnel is reached by HTTP-CONNECT or gRPC. Over
 * gRPC the dial function keeps one connection to the frontend and opens each tunneled
 * connection as a stream of it (GrpcChannel), unless `keepConnection` is false.
 */
import { GrpcChannel } from './grpc-channel.js';
import { dialGrpc, grpcTarget, type GrpcProxy } from './grpc-dialer.js';
import { dialHttpConnect, httpConnectProxyLabel, type HttpConnectProxy } from './http-connect-dialer.js';
import type { TunnelDial } from './tunnel-http-agent.js';

export type TunnelDialerOptions =
  | { mode: 'http-connect'; proxy: HttpConnectProxy; timeoutMs?: number }
  | { mode: 'grpc'; proxy: GrpcProxy; timeoutMs?: number; flowControlWindow?: number; keepConnection?: boolean };

export function createTunnelDialer(options: TunnelDialerOptions): TunnelDial {
  switch (options.mode) {
    case 'http-connect':
      return (address) => dialHttpConnect(options.proxy, address, { timeoutMs: options.timeoutMs });
    case 'grpc': {
      const { proxy, timeoutMs, flowControlWindow } = options;
      if (options.keepConnection === false) return (address) => dialGrpc(proxy, address, { timeoutMs, flowControlWindow });
      const channel = new GrpcChannel(proxy, { timeoutMs, flowControlWindow });
      return (address) => channel.dial(address);
    }
  }
}

/** Names the proxy in messages: `127.0.0.1:10263`, `unix:/run/proxy.sock`, `unix:///run/grpc.sock`. */
export function tunnelProxyLabel(options: TunnelDialerOptions): string {
  return options.mode === 'grpc' ? grpcTarget(options.proxy) : httpConnectProxyLabel(options.proxy);
}
