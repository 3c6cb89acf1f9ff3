/**
 * Negotiation of the per-connection flow-control extension through gRPC metadata. Each end
 * announces its initial receive window; the extension is on for a stream only when both
 * did, so a reference peer (which ignores the key) sees the plain protocol.
 *
 * The configured window (`--connection-window`) is the most one connection may hold: a
 * connection starts at a quarter of it and grows while its reader keeps up (see
 * TunnelConnection), so a long link is filled and a reader that stalls early holds little.
 */
import { MD_FLOW_CONTROL } from '../wire/protocol.js';
import { WINDOW_GROWTH, type FlowControl } from '../mux/tunnel-connection.js';

/** Call metadata as grpc-js's Metadata and ours (grpc-metadata.ts) both offer it. */
export interface MetadataLike {
  get(key: string): unknown[];
  set(key: string, value: string): void;
}

/** Per-connection window by default: the most a stalled reader's connection holds. */
export const DEFAULT_CONNECTION_WINDOW = 16 * 1024 * 1024;
const MIN_WINDOW = 16 * 1024;

/** The window a connection starts with when it may grow to `maxWindow`. */
function initialWindow(maxWindow: number): number {
  return Math.max(MIN_WINDOW, Math.floor(maxWindow / WINDOW_GROWTH));
}

export function announceFlowControl(metadata: MetadataLike, maxWindow: number): void {
  metadata.set(MD_FLOW_CONTROL, `window=${initialWindow(maxWindow)}`);
}

/** The window the peer announced, or undefined when it does not speak the extension. */
export function peerWindow(metadata: MetadataLike): number | undefined {
  const value = metadata.get(MD_FLOW_CONTROL)[0];
  if (typeof value !== 'string') return undefined;
  const match = /(?:^|[;,\s])window=(\d+)/.exec(value);
  const window = match ? Number(match[1]) : NaN;
  return Number.isSafeInteger(window) && window >= MIN_WINDOW ? window : undefined;
}

/** Windows for a stream whose peer sent `peerMetadata`, when this end allows `maxWindow`. */
export function negotiateFlowControl(peerMetadata: MetadataLike, maxWindow: number | undefined): FlowControl | undefined {
  if (maxWindow === undefined) return undefined;
  const sendWindow = peerWindow(peerMetadata);
  return sendWindow === undefined ? undefined : { sendWindow, receiveWindow: initialWindow(maxWindow) };
}
