/**
 * HTTP/2 flow-control windows of the gRPC transport.
 *
 * Node's HTTP/2 starts every stream and connection with a 64 KiB window, which caps one
 * stream at 64 KiB per round trip: about 1.3 MB/s on a 50 ms link. The agent stream's busy
 * direction is agent -> server (responses, logs, watches), so the agent listener raises its
 * receive windows (grpc-server.ts sends them in its settings and a WINDOW_UPDATE;
 * `agentStreamWindow` says how large).
 *
 * Only one direction of a connection may have a large window. A Node HTTP/2 session reads
 * nothing from its socket while one of its writes is pending (nodejs/node#29399), so when
 * both ends may have more in flight than the kernel's socket buffers hold, both block in a
 * write and never read again. The sender of the small-window direction always completes
 * its writes, keeps reading, and so the connection cannot deadlock. That is why our agent
 * carries server -> agent traffic on a second connection (MD_SPLIT_STREAMS): each
 * connection is busy one way only, and both directions get a large window.
 */

/**
 * Receive window of the agent listener (how much an agent may have in flight to us) and of
 * an agent's downlink connection, which carries only server -> agent packets (see
 * MD_SPLIT_STREAMS), so the agent writes nothing big on it. Twice the per-connection window
 * (`--connection-window`), so one connection can use all of its own window and others still
 * move; at least 16 MiB. Without the flow-control extension (a reference peer) it is also
 * the most a paused stream can have buffered.
 */
export function agentStreamWindow(connectionWindow: number | undefined): number {
  return Math.max(MIN_AGENT_STREAM_WINDOW, 2 * (connectionWindow ?? 0));
}

const MIN_AGENT_STREAM_WINDOW = 16 * 1024 * 1024;

/**
 * Receive window of a ProxyService client: its busy direction is server -> client, so the
 * client's side is the large one.
 */
export const PROXY_CLIENT_WINDOW = 16 * 1024 * 1024;

/**
 * Receive window of the gRPC frontend (stream and connection): how much a ProxyService
 * client may have in flight to the server, i.e. its uploads. Twice Node's 64 KiB, and no
 * more: it stays below what the kernel buffers for one connection (a unix socket's send
 * buffer is 208 KiB by default), so a Node client's writes always complete and it keeps
 * reading, while the server sends it as much as PROXY_CLIENT_WINDOW allows. At Node's
 * default the server sends a WINDOW_UPDATE every 20 KiB of upload and the client waits for
 * each; twice the window nearly halves the server's writes per MiB (bench scenario bulk,
 * upload via gRPC; docs/performance.md).
 */
export const PROXY_SERVER_WINDOW = 128 * 1024;
