/**
 * The konnectivity series that server and agent share or mirror, with the reference's names,
 * types and labels: stream_packets_total{segment,packet_type}, dial_duration_seconds,
 * the server's dial_failure_count{reason}; and ours for flow control.
 */
import { DialError } from '../mux/dialing-mux.js';
import { newFlowCounts, type FlowCounts, type Multiplexer, type StreamCounters } from '../mux/multiplexer.js';
import { PacketType, packetTypeName } from '../wire/packet.js';
import { ERR_NO_AGENT } from '../wire/protocol.js';
import type { Dial } from '../server/dial-router.js';
import { GrpcCallError } from '../transport/grpc-client.js';
import { GrpcFramingError } from '../transport/grpc-stream.js';
import type { Counter, Histogram, MetricsRegistry, PacketCounter } from './metrics.js';

/** The packet types reported, by their protocol names (WINDOW_UPDATE is this tunnel's extension). */
const PACKET_TYPES: Array<[number, string]> = [
  PacketType.DIAL_REQ, PacketType.DIAL_RSP, PacketType.CLOSE_REQ, PacketType.CLOSE_RSP,
  PacketType.DATA, PacketType.DIAL_CLS, PacketType.DRAIN, PacketType.WINDOW_UPDATE,
].map((type) => [type, packetTypeName(type)]);

/** The reference server's dial latency buckets (1 µs to 12.5 s). */
export const SERVER_DIAL_BUCKETS = [0.000001, 0.00001, 0.0001, 0.005, 0.025, 0.1, 0.5, 2.5, 12.5];
/** The reference agent's (5 ms to 30 s). */
export const AGENT_DIAL_BUCKETS = [0.005, 0.025, 0.1, 0.5, 2.5, 10, 30];

/** The segments of the tunnel, as the reference names them. */
export type Segment = 'from_client' | 'to_client' | 'from_agent' | 'to_agent';

/** Packet and flow-control counts of a process, and the counters each kind of stream counts into. */
export class StreamMetrics {
  readonly packets: PacketCounter;
  readonly flow: FlowCounts = newFlowCounts();
  readonly errors: Counter;

  constructor(metrics: MetricsRegistry, streams: () => Iterable<Multiplexer>) {
    this.errors = metrics.counter('stream_errors_total', 'Count of gRPC stream errors, by segment, grpc Code, packet type (example: from_agent, Unavailable, Unknown: a stream that failed while receiving).');
    this.packets = metrics.packetCounter('stream_packets_total', 'Count of packets processed, by segment and packet type (example: from_client, DIAL_REQ). DATA arriving over gRPC counts the pieces it is handled in.', PACKET_TYPES);
    metrics.counterOf('flow_control_window_stalls_total', 'Times a tunneled connection had data to send and no flow-control window left, waiting for the peer\'s WINDOW_UPDATE.', () => this.flow.windowStalls);
    metrics.counterOf('flow_control_credit_granted_bytes_total', 'Bytes of flow-control window granted to peers (WINDOW_UPDATE sent).', () => this.flow.creditGranted);
    metrics.counterOf('flow_control_credit_received_bytes_total', 'Bytes of flow-control window granted by peers (WINDOW_UPDATE received).', () => this.flow.creditReceived);
    metrics.gauge('flow_control_send_credit_bytes', 'Bytes open tunneled connections may still send before they wait for a WINDOW_UPDATE (connections with flow control).', () => {
      let credit = 0;
      for (const mux of streams()) for (const conn of mux.openConnections()) credit += conn.windows?.sendCredit ?? 0;
      return credit;
    });
  }

  /** Counters for streams whose received packets are `received`'s segment and sent ones `sent`'s. */
  counters(received: Segment, sent: Segment): StreamCounters {
    const labels = new Map<string, Record<string, string>>();
    return {
      received: this.packets.segment(received).byType,
      sent: this.packets.segment(sent).byType,
      flow: this.flow,
      streamError: (err) => {
        const code = grpcCodeName(err);
        let set = labels.get(code);
        if (!set) labels.set(code, (set = { segment: received, code, packet_type: 'Unknown' }));
        this.errors.inc(set);
      },
    };
  }
}

/** grpc-go's names of the status codes, as the reference's code label reads. */
const GO_CODE_NAMES = ['OK', 'Canceled', 'Unknown', 'InvalidArgument', 'DeadlineExceeded', 'NotFound', 'AlreadyExists', 'PermissionDenied',
  'ResourceExhausted', 'FailedPrecondition', 'Aborted', 'OutOfRange', 'Unimplemented', 'Internal', 'Unavailable', 'DataLoss', 'Unauthenticated'];

/** The gRPC status of a stream error, when it carries one; Unknown otherwise (a connection that went away). */
function grpcCodeName(err: Error): string {
  const code = err instanceof GrpcCallError || err instanceof GrpcFramingError ? err.code : undefined;
  return code === undefined ? 'Unknown' : GO_CODE_NAMES[code] ?? 'Unknown';
}

/** Why a dial through an agent failed, by the reference's dial_failure_count reasons. */
export function dialFailureReason(err: unknown, cancelled: boolean): string {
  if (cancelled) return 'frontend_close';
  if (!(err instanceof DialError)) return 'error_response';
  if (err.kind === 'timeout') return 'backend_dial_timeout';
  if (err.kind === 'closed') return 'backend_close';
  // The router refuses with the protocol's own text when no agent serves the address.
  return err.message === ERR_NO_AGENT ? 'no_agent' : 'error_response';
}

/** `dial`, observing each successful dial's latency and counting each failure by reason. */
export function instrumentDial(dial: Dial, latency: Histogram, failures: Counter): Dial {
  const reasons = new Map<string, Record<string, string>>();
  const labels = (reason: string) => {
    let set = reasons.get(reason);
    if (!set) reasons.set(reason, (set = { reason }));
    return set;
  };
  return async (address, options) => {
    const started = performance.now();
    try {
      const conn = await dial(address, options);
      latency.observe((performance.now() - started) / 1000);
      return conn;
    } catch (err) {
      failures.inc(labels(dialFailureReason(err, options?.signal?.aborted === true)));
      throw err;
    }
  };
}
