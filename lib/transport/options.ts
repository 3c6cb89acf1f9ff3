/**
 * gRPC channel options of the ProxyService client, and the keepalive every gRPC end uses.
 */
import * as grpc from '@grpc/grpc-js';
import { DEFAULT_MAX_MESSAGE_SIZE } from '../wire/protocol.js';

/** Keepalive pings find a dead peer behind a NAT or load balancer that drops silently. */
export const KEEPALIVE_TIME_MS = 30_000;
export const KEEPALIVE_TIMEOUT_MS = 15_000;

/** Options of every grpc-js channel. */
const COMMON_OPTIONS = {
  // Channelz bookkeeping costs per call and per message; nothing here reads it.
  'grpc.enable_channelz': 0,
  'grpc.max_receive_message_length': DEFAULT_MAX_MESSAGE_SIZE,
  'grpc.keepalive_time_ms': KEEPALIVE_TIME_MS,
  'grpc.keepalive_timeout_ms': KEEPALIVE_TIMEOUT_MS,
  'grpc.keepalive_permit_without_calls': 1,
} as const;

/** Channels keep Node's default receive windows unless `extra` raises them: see http2-windows.ts. */
export function channelOptions(extra: grpc.ChannelOptions = {}): grpc.ChannelOptions {
  return { ...COMMON_OPTIONS, ...extra };
}
