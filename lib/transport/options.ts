/**
 * gRPC channel and server options shared by the server, the agent and the clients.
 */
import * as grpc from '@grpc/grpc-js';
import { DEFAULT_MAX_MESSAGE_SIZE } from '../wire/protocol.js';
import { setServerStreamWindow } from './http2-windows.js';

/** Keepalive pings find a dead peer behind a NAT or load balancer that drops silently. */
const KEEPALIVE_TIME_MS = 30_000;
const KEEPALIVE_TIMEOUT_MS = 15_000;

/** Options both ends of every gRPC connection share. */
const COMMON_OPTIONS = {
  // Channelz bookkeeping costs per call and per message; nothing here reads it.
  'grpc.enable_channelz': 0,
  'grpc.max_receive_message_length': DEFAULT_MAX_MESSAGE_SIZE,
  'grpc.keepalive_time_ms': KEEPALIVE_TIME_MS,
  'grpc.keepalive_timeout_ms': KEEPALIVE_TIMEOUT_MS,
  'grpc.keepalive_permit_without_calls': 1,
} as const;

/**
 * A grpc.Server with our options; with `receiveWindow`, its HTTP/2 receive windows are
 * raised to that size (see http2-windows.ts for why only the agent listener does this).
 */
export function createServer(receiveWindow?: number): grpc.Server {
  const server = new grpc.Server({ ...COMMON_OPTIONS });
  if (receiveWindow !== undefined) setServerStreamWindow(server, receiveWindow);
  return server;
}

/** Channels keep Node's default receive windows unless `extra` raises them: see http2-windows.ts. */
export function channelOptions(extra: grpc.ChannelOptions = {}): grpc.ChannelOptions {
  return { ...COMMON_OPTIONS, ...extra };
}
