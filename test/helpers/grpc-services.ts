/**
 * grpc-js bindings of the two konnectivity services, serialised with our packet codec. The
 * paths have no package prefix, exactly as the reference's .proto files declare them. The
 * tunnel itself speaks gRPC on node:http2 (lib/transport/grpc-server.ts, grpc-client.ts);
 * these let the tests stand a grpc-js peer in for the reference.
 */
import type * as grpc from '@grpc/grpc-js';
import { decodePacket, encodePacket } from '../../lib/wire/codec.js';
import type { KnownPacket, Packet } from '../../lib/wire/packet.js';
import type { PacketStream } from '../../lib/mux/packet-stream.js';
import { AGENT_CONNECT_PATH, PROXY_PATH } from '../../lib/wire/protocol.js';

export function serializePacket(packet: KnownPacket): Buffer {
  return encodePacket(packet);
}

export function deserializePacket(bytes: Buffer): Packet {
  return decodePacket(bytes);
}

function bidiMethod(path: string, originalName: string): grpc.MethodDefinition<KnownPacket, KnownPacket> {
  return {
    path,
    originalName,
    requestStream: true,
    responseStream: true,
    requestSerialize: serializePacket,
    requestDeserialize: deserializePacket,
    responseSerialize: serializePacket,
    responseDeserialize: deserializePacket,
  };
}

export const agentServiceDefinition = {
  Connect: bidiMethod(AGENT_CONNECT_PATH, 'connect'),
} satisfies grpc.ServiceDefinition;

export const proxyServiceDefinition = {
  Proxy: bidiMethod(PROXY_PATH, 'proxy'),
} satisfies grpc.ServiceDefinition;

/** A grpc-js bidi call is an object-mode Duplex of packets; its typings just do not say so. */
export function asPacketStream(call: grpc.ClientDuplexStream<KnownPacket, Packet> | grpc.ServerDuplexStream<KnownPacket, KnownPacket>): PacketStream {
  return call as unknown as PacketStream;
}
