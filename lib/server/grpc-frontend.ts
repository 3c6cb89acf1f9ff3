/**
 * The gRPC frontend (ProxyService.Proxy), as kube-apiserver's egress selector uses it over a
 * unix socket: the client sends DIAL_REQ on its stream, the server dials through an agent
 * and splices the two connections. A client may open several connections on one stream.
 */
import * as grpc from '@grpc/grpc-js';
import { AcceptingMux } from '../mux/accepting-mux.js';
import type { KnownPacket } from '../wire/packet.js';
import { asPacketStream } from '../transport/services.js';
import { announceFlowControl, negotiateFlowControl } from '../transport/flow-control-metadata.js';
import type { Logger } from '../observe/log.js';
import type { Dial } from './dial-router.js';

export interface GrpcFrontendOptions {
  dial: Dial;
  log: Logger;
  connectionWindow?: number;
  maxDataSize?: number;
  /** Called with each open Proxy stream's mux, for connection accounting. */
  onStream?: (mux: AcceptingMux) => void;
}

export function proxyHandler(options: GrpcFrontendOptions): grpc.handleBidiStreamingCall<KnownPacket, KnownPacket> {
  return (call: grpc.ServerDuplexStream<KnownPacket, KnownPacket>) => {
    const windows = negotiateFlowControl(call.metadata, options.connectionWindow);
    const headers = new grpc.Metadata();
    if (windows) announceFlowControl(headers, options.connectionWindow!);
    call.sendMetadata(headers);
    const mux = new AcceptingMux(
      asPacketStream(call),
      (request, signal) => options.dial(request.address, { random: request.random, signal }),
      { name: `frontend ${call.getPeer() || 'unix'}`, flowControl: windows, maxDataSize: options.maxDataSize, log: options.log },
    );
    options.onStream?.(mux);
    call.on('cancelled', () => mux.close());
    mux.once('close', () => {
      if (!call.destroyed) call.end();
    });
  };
}
