/**
 * The AgentService: agents dial in and open one Connect stream each. The server reads the
 * agent's id and identifiers, answers with its serverid/servercount headers before any
 * packet (the reference agent fails the stream without them), and registers the stream
 * for routing until it ends. Our own agents may ask for a second stream on a second
 * connection that carries the server -> agent direction (MD_SPLIT_STREAMS).
 */
import { randomBytes } from 'node:crypto';
import { joinPacketStreams, type PacketStream } from '../mux/packet-stream.js';
import type { FlowControl } from '../mux/tunnel-connection.js';
import type { StreamCounters } from '../mux/multiplexer.js';
import { DialingMux } from '../mux/dialing-mux.js';
import { AcceptingMux } from '../mux/accepting-mux.js';
import type { TunnelConnection } from '../mux/tunnel-connection.js';
import { MD_AGENT_ID, MD_AGENT_IDENTIFIERS, MD_DOWNLINK_FOR, MD_PUSH, MD_PUSH_FOR, MD_SERVER_COUNT, MD_SERVER_DRAIN, MD_SERVER_ID, MD_SPLIT_STREAMS } from '../wire/protocol.js';
import { GrpcStatus, Metadata } from '../transport/grpc-metadata.js';
import type { BidiHandler, ServerCall } from '../transport/grpc-server.js';
import { announceFlowControl, negotiateFlowControl } from '../transport/flow-control-metadata.js';
import type { Logger } from '../observe/log.js';
import { parseAgentIdentifiers } from '../wire/agent-identifiers.js';
import { describePeer, type PeerIdentity } from '../transport/peer-identity.js';
import { agentRefusal, clusterOfCertificate, type AgentIdentityRule } from './agent-identity.js';
import type { Caller } from './reverse-proxy/routes.js';
import type { AgentAuthenticator } from './token-auth.js';
import type { AgentRegistry } from './agent-registry.js';
import type { Backend } from './backend.js';

export interface AgentListenerOptions {
  serverID: string;
  /** The count sent to each agent as it connects (from --server-count, or counted from Leases). */
  serverCount: () => number;
  registry: AgentRegistry;
  /** Per-connection receive window offered to agents; undefined turns flow control off. */
  connectionWindow?: number;
  maxDataSize?: number;
  /** Agree to agents' request for one connection per direction. */
  splitStreams?: boolean;
  /** What an agent's certificate lets it announce; off (anything) when absent. */
  identityRule?: AgentIdentityRule;
  /** Checks an agent's credentials (TokenReview) before it is answered. */
  authenticate?: AgentAuthenticator;
  /** Takes connections that agents push towards the hub (MD_PUSH); agents' requests for it are declined when absent. */
  push?: PushAcceptor;
  /** Called with each push stream's mux, for connection accounting. */
  onPushStream?: (mux: AcceptingMux) => void;
  /** Where agent streams count their packets, for the metrics. */
  counters?: StreamCounters;
  /** Whether the server is shutting down: new streams are then refused (UNAVAILABLE), so agents go to another server. */
  draining?: () => boolean;
  log: Logger;
}

/** Where pushed connections go: the reverse proxy's routes. */
export interface PushAcceptor {
  /** Why connections for the route `name` are refused, or undefined when they are taken. */
  refusal(name: string): string | undefined;
  serve(conn: TunnelConnection, name: string, caller: Caller): void;
}

function single(metadata: Metadata, key: string): string | undefined | Error {
  const values = metadata.get(key);
  if (values.length > 1) return new Error(`expected one ${key} in the stream metadata, got ${values.length}`);
  return values[0];
}

/** How long the server holds an agent's first stream while it opens its downlink. */
const DOWNLINK_WAIT_MS = 10_000;

interface AgentIdentity {
  agentID: string;
  identifiers: string;
  peer: string;
  peerIdentity?: PeerIdentity;
  windows?: FlowControl;
  /** The token of the agent's push stream, when it asked for one. */
  pushToken?: string;
  /** The agent understands DRAIN from the server (MD_SERVER_DRAIN). */
  takesServerDrain: boolean;
}

/** An agent stream whose agent may open a push stream. */
interface PushSlot {
  identity: AgentIdentity;
  caller: Caller;
  mux?: AcceptingMux;
}

interface WaitingUplink extends AgentIdentity {
  call: ServerCall;
  timer: NodeJS.Timeout;
}

export function agentConnectHandler(options: AgentListenerOptions): BidiHandler {
  const { registry, log } = options;
  const waiting = new Map<string, WaitingUplink>();
  const pushSlots = new Map<string, PushSlot>();

  /** Registers an agent's packet stream for routing until it closes. */
  const register = (identity: AgentIdentity, stream: PacketStream, calls: ServerCall[]) => {
    const { agentID, peer, windows } = identity;
    const name = `agent ${agentID}`;
    const mux = new DialingMux(stream, { name, flowControl: windows, maxDataSize: options.maxDataSize, log });
    if (options.counters) mux.countInto(options.counters);
    const backend: Backend = {
      agentID, identifiers: parseAgentIdentifiers(identity.identifiers), mux, connectedAt: new Date(), peer, takesServerDrain: identity.takesServerDrain,
    };
    registry.add(backend);
    log.info('agent connected', {
      agentID, identifiers: identity.identifiers, peer, flowControl: windows ? 'on' : 'off', streams: calls.length === 2 ? 'split' : 'single',
    });
    mux.on('drain-requested', () => log.info('agent is draining: no new dials go to it', { agentID }));
    for (const call of calls) call.on('cancelled', () => mux.close(new Error(`${name} went away`)));
    const token = identity.pushToken;
    if (token) {
      // As on the reverse-proxy port, only a certificate names the caller's cluster: under
      // --agent-identity=off an agent announces what it likes, and its pushes name none.
      const cluster = clusterOfCertificate(options.identityRule ?? { kind: 'off' }, identity.peerIdentity);
      pushSlots.set(token, { identity, caller: { cluster, subject: `agent ${agentID} (${describePeer(identity.peerIdentity)})` } });
    }
    mux.once('close', (reason: Error) => {
      if (token) {
        pushSlots.get(token)?.mux?.close(new Error(`${name} went away`));
        pushSlots.delete(token);
      }
      registry.remove(backend);
      for (const call of calls) call.sendStatus(GrpcStatus.OK);
      log.info('agent disconnected', { agentID, peer, reason: reason.message });
    });
  };

  /**
   * Ends a stream the server does not take. The reference agent reads the response headers
   * before the status and, without a serverid among them, logs that instead of the reason;
   * so a stream of an agent that is not ours gets the headers first. Ours (MD_SERVER_DRAIN,
   * and every downlink and push stream) get the status alone, which fails their open at once.
   */
  const refuse = (call: ServerCall, code: number, reason: string) => {
    const ours = single(call.metadata, MD_SERVER_DRAIN) === '1' || call.metadata.get(MD_DOWNLINK_FOR).length > 0 || call.metadata.get(MD_PUSH_FOR).length > 0;
    if (!ours) call.sendMetadata(serverHeaders(options));
    call.sendStatus(code, reason);
  };

  /** The second stream of a split agent: packets to the agent go here. */
  const attachDownlink = (call: ServerCall, token: string) => {
    const uplink = waiting.get(token);
    if (!uplink) {
      // Routine behind a load balancer: the agent tries another connection.
      log.info('refusing a downlink stream for no waiting agent stream (its uplink is on another server?)', { peer: call.peer });
      refuse(call, GrpcStatus.NOT_FOUND, 'no agent stream of this server waits for this downlink (behind a load balancer it may have reached another server); reconnect');
      return;
    }
    waiting.delete(token);
    clearTimeout(uplink.timer);
    call.sendMetadata(serverHeaders(options));
    register(uplink, joinPacketStreams(uplink.call.packets, call.packets), [uplink.call, call]);
  };

  /** An agent's push stream: it dials route names, the reverse proxy serves what they open. */
  const attachPush = (call: ServerCall, token: string) => {
    const slot = pushSlots.get(token);
    const refusePush = (code: number, reason: string) => {
      log.warn('refusing a push stream', { peer: call.peer, reason });
      refuse(call, code, reason);
    };
    if (!slot || !options.push) return refusePush(GrpcStatus.NOT_FOUND, 'no agent stream of this server is waiting for this push stream; reconnect');
    if (slot.mux) return refusePush(GrpcStatus.ALREADY_EXISTS, 'this agent stream has its push stream already');
    if (slot.identity.peerIdentity?.commonName !== call.peerIdentity?.commonName) {
      return refusePush(GrpcStatus.PERMISSION_DENIED, `the push stream's certificate (${describePeer(call.peerIdentity)}) is not its agent stream's (${describePeer(slot.identity.peerIdentity)})`);
    }
    const push = options.push;
    const windows = negotiateFlowControl(call.metadata, options.connectionWindow);
    const headers = new Metadata();
    if (windows) announceFlowControl(headers, options.connectionWindow!);
    call.sendMetadata(headers);
    const mux = new AcceptingMux(call.packets, (request) => {
      const refusal = push.refusal(request.address);
      if (refusal) {
        log.warn('push connection refused', { agentID: slot.identity.agentID, cluster: slot.caller.cluster, route: request.address, reason: refusal });
        return Promise.reject(new Error(refusal));
      }
      return Promise.resolve((conn: TunnelConnection) => push.serve(conn, request.address, slot.caller));
    }, { name: `push stream of agent ${slot.identity.agentID}`, flowControl: windows, maxDataSize: options.maxDataSize, log });
    slot.mux = mux;
    options.onPushStream?.(mux);
    log.info('agent opened its push stream', { agentID: slot.identity.agentID, cluster: slot.caller.cluster, flowControl: windows ? 'on' : 'off' });
    call.on('cancelled', () => mux.close());
    mux.once('close', () => {
      if (slot.mux === mux) slot.mux = undefined;
      call.sendStatus(GrpcStatus.OK);
    });
  };

  /** Answers an admitted agent's stream and registers it (or waits for its downlink). */
  const admit = (call: ServerCall, agentID: string, identifiers: string) => {
    const peer = call.peer;
    const headers = serverHeaders(options);
    const windows = negotiateFlowControl(call.metadata, options.connectionWindow);
    if (windows) announceFlowControl(headers, options.connectionWindow!);
    const pushToken = options.push && single(call.metadata, MD_PUSH) === '1' ? randomBytes(16).toString('hex') : undefined;
    if (pushToken) headers.set(MD_PUSH, pushToken);
    const takesServerDrain = single(call.metadata, MD_SERVER_DRAIN) === '1';
    const identity: AgentIdentity = { agentID, identifiers, peer, peerIdentity: call.peerIdentity, windows, pushToken, takesServerDrain };

    if (options.splitStreams && single(call.metadata, MD_SPLIT_STREAMS) === '1') {
      const splitToken = randomBytes(16).toString('hex');
      headers.set(MD_SPLIT_STREAMS, splitToken);
      const timer = setTimeout(() => {
        if (waiting.delete(splitToken)) {
          log.warn('agent did not open its downlink stream in time; closing its stream', { agentID, peer });
          call.sendStatus(GrpcStatus.DEADLINE_EXCEEDED, `no downlink stream within ${DOWNLINK_WAIT_MS} ms`);
        }
      }, DOWNLINK_WAIT_MS);
      waiting.set(splitToken, { ...identity, call, timer });
      call.on('cancelled', () => {
        if (waiting.delete(splitToken)) clearTimeout(timer);
      });
      call.sendMetadata(headers);
      return;
    }
    call.sendMetadata(headers);
    register(identity, call.packets, [call]);
  };

  return (call: ServerCall) => {
    if (options.draining?.()) {
      log.info('refusing an agent stream: this server is shutting down', { peer: call.peer });
      refuse(call, GrpcStatus.UNAVAILABLE, `tunnel server ${options.serverID} is shutting down; connect to another server`);
      return;
    }
    const token = single(call.metadata, MD_DOWNLINK_FOR);
    if (typeof token === 'string') {
      attachDownlink(call, token);
      return;
    }
    const pushFor = single(call.metadata, MD_PUSH_FOR);
    if (typeof pushFor === 'string') {
      attachPush(call, pushFor);
      return;
    }
    const peer = call.peer;
    const agentID = single(call.metadata, MD_AGENT_ID);
    const identifiers = single(call.metadata, MD_AGENT_IDENTIFIERS);
    const problem = agentID instanceof Error ? agentID
      : identifiers instanceof Error ? identifiers
        : !agentID ? new Error(`expected one ${MD_AGENT_ID} in the stream metadata, got none`) : undefined;
    if (problem) {
      log.warn('refusing agent stream', { peer, reason: problem.message });
      refuse(call, GrpcStatus.INVALID_ARGUMENT, problem.message);
      return;
    }
    const parsed = parseAgentIdentifiers((identifiers as string | undefined) ?? '');
    const refusal = agentRefusal(options.identityRule ?? { kind: 'off' }, call.peerIdentity, parsed);
    if (refusal) {
      log.warn('refusing agent stream', { peer, agentID, identifiers, certificate: describePeer(call.peerIdentity), reason: refusal });
      refuse(call, GrpcStatus.PERMISSION_DENIED, refusal);
      return;
    }
    if (!options.authenticate) {
      admit(call, agentID as string, (identifiers as string | undefined) ?? '');
      return;
    }
    // As the reference server does: authenticate, then answer with the headers.
    options.authenticate(call.metadata, parsed).then((denied) => {
      if (!denied) {
        admit(call, agentID as string, (identifiers as string | undefined) ?? '');
        return;
      }
      log.warn('refusing agent stream', { peer, agentID, identifiers, reason: denied });
      refuse(call, GrpcStatus.UNAUTHENTICATED, denied);
    }, (err: Error) => {
      log.warn('cannot authenticate an agent; refusing its stream for now', { peer, agentID, reason: err.message });
      refuse(call, GrpcStatus.UNAVAILABLE, `the tunnel server cannot check the agent's token now: ${err.message}`);
    });
  };

}

function serverHeaders(options: AgentListenerOptions): Metadata {
  const headers = new Metadata();
  headers.set(MD_SERVER_ID, options.serverID);
  headers.set(MD_SERVER_COUNT, String(options.serverCount()));
  return headers;
}
