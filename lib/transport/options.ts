/**
 * gRPC channel and server options shared by the server, the agent and the clients.
 */
import type * as grpc from '@grpc/grpc-js';
import { DEFAULT_MAX_MESSAGE_SIZE } from '../wire/protocol.js';

/** Keepalive pings find a dead peer behind a NAT or load balancer that drops silently. */
const KEEPALIVE_TIME_MS = 30_000;
const KEEPALIVE_TIMEOUT_MS = 15_000;

export function serverOptions(): grpc.ServerOptions {
  return {
    'grpc.max_receive_message_length': DEFAULT_MAX_MESSAGE_SIZE,
    'grpc.keepalive_time_ms': KEEPALIVE_TIME_MS,
    'grpc.keepalive_timeout_ms': KEEPALIVE_TIMEOUT_MS,
    'grpc.keepalive_permit_without_calls': 1,
  };
}

export function channelOptions(extra: grpc.ChannelOptions = {}): grpc.ChannelOptions {
  return {
    'grpc.max_receive_message_length': DEFAULT_MAX_MESSAGE_SIZE,
    'grpc.keepalive_time_ms': KEEPALIVE_TIME_MS,
    'grpc.keepalive_timeout_ms': KEEPALIVE_TIMEOUT_MS,
    'grpc.keepalive_permit_without_calls': 1,
    ...extra,
  };
}
