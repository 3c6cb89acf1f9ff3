/**
 * The client role: dialers that open one tunneled connection through the tunnel server's
 * HTTP-CONNECT or gRPC frontend, and http(s) agents that send requests through them.
 */
export * from './http-connect-dialer.js';
export * from './grpc-dialer.js';
export * from './grpc-channel.js';
export * from './tunnel-dialer.js';
export * from './tunnel-socket.js';
export * from './tunnel-http-agent.js';
export * from './tunnel-request.js';
export * from './client-tls.js';
export * from './kube.js';
export * from '../transport/host-port.js';
/** What a refused or failed gRPC dial rejects with. */
export { DialError } from '../mux/dialing-mux.js';
export type { TunnelConnection } from '../mux/tunnel-connection.js';
