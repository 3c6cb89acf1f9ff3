/**
 * Negotiation of the per-connection flow-control extension through gRPC metadata. Each end
 * announces its receive window; the extension is on for a stream only when both did, so a
 * reference peer (which ignores the key) sees the plain protocol.
 */
import type * as grpc from '@grpc/grpc-js';
import { MD_FLOW_CONTROL } from '../wire/protocol.js';
import type { FlowControl } from '../mux/tunnel-connection.js';

/** Per-connection receive window announced by default: a stalled reader holds at most this. */
export const DEFAULT_CONNECTION_WINDOW = 4 * 1024 * 1024;
const MIN_WINDOW = 16 * 1024;

export function announceFlowControl(metadata: grpc.Metadata, receiveWindow: number): void {
  metadata.set(MD_FLOW_CONTROL, `window=${receiveWindow}`);
}

/** The window the peer announced, or undefined when it does not speak the extension. */
export function peerWindow(metadata: grpc.Metadata): number | undefined {
  const value = metadata.get(MD_FLOW_CONTROL)[0];
  if (typeof value !== 'string') return undefined;
  const match = /(?:^|[;,\s])window=(\d+)/.exec(value);
  const window = match ? Number(match[1]) : NaN;
  return Number.isSafeInteger(window) && window >= MIN_WINDOW ? window : undefined;
}

export function negotiateFlowControl(peerMetadata: grpc.Metadata, receiveWindow: number | undefined): FlowControl | undefined {
  if (receiveWindow === undefined) return undefined;
  const sendWindow = peerWindow(peerMetadata);
  return sendWindow === undefined ? undefined : { sendWindow, receiveWindow };
}
