/**
 * The gRPC frontend (ProxyService.Proxy), as kube-apiserver's egress selector uses it over a
 * unix socket: the client sends DIAL_REQ on its stream, the server dials through an agent
 * and splices the two connections. A client may open several connections on one stream.
 */
import { AcceptingMux } from '../mux/accepting-mux.js';
import { GrpcStatus, Metadata } from '../transport/grpc-metadata.js';
import type { BidiHandler, ServerCall } from '../transport/grpc-server.js';
import { announceFlowControl, negotiateFlowControl } from '../transport/flow-control-metadata.js';
import type { Logger } from '../observe/log.js';
import type { Dial } from './dial-router.js';
import type { ClientPolicy } from './client-policy.js';
import { describePeer } from '../transport/peer-identity.js';
import { clientKey } from './limits.js';

export interface GrpcFrontendOptions {
  dial: Dial;
  log: Logger;
  connectionWindow?: number;
  maxDataSize?: number;
  /** Who may dial what; everyone, everything when absent. */
  policy?: ClientPolicy;
  /** Called with each open Proxy stream's mux, for connection accounting. */
  onStream?: (mux: AcceptingMux) => void;
}

export function proxyHandler(options: GrpcFrontendOptions): BidiHandler {
  return (call: ServerCall) => {
    const windows = negotiateFlowControl(call.metadata, options.connectionWindow);
    const headers = new Metadata();
    if (windows) announceFlowControl(headers, options.connectionWindow!);
    call.sendMetadata(headers);
    const mux = new AcceptingMux(
      call.packets,
      (request, signal) => {
        const refusal = options.policy?.(call.peerIdentity, request.address);
        if (refusal) {
          options.log.warn('gRPC dial refused', { address: request.address, peer: call.peer, certificate: describePeer(call.peerIdentity), reason: refusal });
          return Promise.reject(new Error(refusal));
        }
        return options.dial(request.address, { random: request.random, signal, client: clientKey(call.peerIdentity), frontend: 'grpc' });
      },
      { name: `frontend ${call.peer}`, flowControl: windows, maxDataSize: options.maxDataSize, log: options.log },
    );
    options.onStream?.(mux);
    call.on('cancelled', () => mux.close());
    mux.once('close', () => call.sendStatus(GrpcStatus.OK));
  };
}
