/**
 * gRPC channel and server options shared by the server, the agent and the clients.
 */
import * as grpc from '@grpc/grpc-js';
import { DEFAULT_MAX_MESSAGE_SIZE } from '../wire/protocol.js';
import { DEFAULT_HTTP2_WINDOW, setServerStreamWindow } from './http2-windows.js';

/** Keepalive pings find a dead peer behind a NAT or load balancer that drops silently. */
const KEEPALIVE_TIME_MS = 30_000;
const KEEPALIVE_TIMEOUT_MS = 15_000;

function serverOptions(): grpc.ServerOptions {
  return {
    // Channelz bookkeeping costs per call and per message; nothing here reads it.
    'grpc.enable_channelz': 0,
    'grpc.max_receive_message_length': DEFAULT_MAX_MESSAGE_SIZE,
    'grpc.keepalive_time_ms': KEEPALIVE_TIME_MS,
    'grpc.keepalive_timeout_ms': KEEPALIVE_TIMEOUT_MS,
    'grpc.keepalive_permit_without_calls': 1,
  };
}

/** A grpc.Server with our options and HTTP/2 windows raised to `http2Window`. */
export function createServer(http2Window = DEFAULT_HTTP2_WINDOW): grpc.Server {
  const server = new grpc.Server(serverOptions());
  setServerStreamWindow(server, http2Window);
  return server;
}

export function channelOptions(extra: grpc.ChannelOptions = {}, http2Window = DEFAULT_HTTP2_WINDOW): grpc.ChannelOptions {
  return {
    'grpc.enable_channelz': 0,
    'grpc-node.flow_control_window': http2Window,
    'grpc.max_receive_message_length': DEFAULT_MAX_MESSAGE_SIZE,
    'grpc.keepalive_time_ms': KEEPALIVE_TIME_MS,
    'grpc.keepalive_timeout_ms': KEEPALIVE_TIMEOUT_MS,
    'grpc.keepalive_permit_without_calls': 1,
    ...extra,
  };
}
