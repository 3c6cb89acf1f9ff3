/**
 * The AgentService: agents dial in and open one Connect stream each. The server reads the
 * agent's id and identifiers, answers with its serverid/servercount headers before any
 * packet (the reference agent fails the stream without them), and registers the stream
 * for routing until it ends.
 */
import * as grpc from '@grpc/grpc-js';
import { DialingMux } from '../mux/dialing-mux.js';
import type { KnownPacket } from '../wire/packet.js';
import { MD_AGENT_ID, MD_AGENT_IDENTIFIERS, MD_SERVER_COUNT, MD_SERVER_ID } from '../wire/protocol.js';
import { asPacketStream } from '../transport/services.js';
import { announceFlowControl, negotiateFlowControl } from '../transport/flow-control-metadata.js';
import type { Logger } from '../observe/log.js';
import { parseAgentIdentifiers } from './agent-identifiers.js';
import type { AgentRegistry } from './agent-registry.js';
import type { Backend } from './backend.js';

export interface AgentListenerOptions {
  serverID: string;
  serverCount: number;
  registry: AgentRegistry;
  /** Per-connection receive window offered to agents; undefined turns flow control off. */
  connectionWindow?: number;
  maxDataSize?: number;
  log: Logger;
}

type AgentCall = grpc.ServerDuplexStream<KnownPacket, KnownPacket>;

function single(metadata: grpc.Metadata, key: string): string | undefined | Error {
  const values = metadata.get(key);
  if (values.length > 1) return new Error(`expected one ${key} in the stream metadata, got ${values.length}`);
  const value = values[0];
  return value === undefined ? undefined : String(value);
}

export function agentConnectHandler(options: AgentListenerOptions): grpc.handleBidiStreamingCall<KnownPacket, KnownPacket> {
  const { registry, log } = options;
  return (call: AgentCall) => {
    const peer = call.getPeer();
    const agentID = single(call.metadata, MD_AGENT_ID);
    const identifiers = single(call.metadata, MD_AGENT_IDENTIFIERS);
    const problem = agentID instanceof Error ? agentID
      : identifiers instanceof Error ? identifiers
        : !agentID ? new Error(`expected one ${MD_AGENT_ID} in the stream metadata, got none`) : undefined;
    if (problem) {
      log.warn('refusing agent stream', { peer, reason: problem.message });
      call.emit('error', { code: grpc.status.INVALID_ARGUMENT, details: problem.message });
      return;
    }

    const headers = new grpc.Metadata();
    headers.set(MD_SERVER_ID, options.serverID);
    headers.set(MD_SERVER_COUNT, String(options.serverCount));
    const windows = negotiateFlowControl(call.metadata, options.connectionWindow);
    if (windows) announceFlowControl(headers, windows.receiveWindow);
    call.sendMetadata(headers);

    const ids = parseAgentIdentifiers((identifiers as string | undefined) ?? '');
    const name = `agent ${agentID as string}`;
    const mux = new DialingMux(asPacketStream(call), { name, flowControl: windows, maxDataSize: options.maxDataSize, log });
    const backend: Backend = { agentID: agentID as string, identifiers: ids, mux, connectedAt: new Date(), peer };
    registry.add(backend);
    log.info('agent connected', { agentID, identifiers: identifiers as string | undefined, peer, flowControl: windows ? 'on' : 'off' });

    mux.on('drain-requested', () => log.info('agent is draining: no new dials go to it', { agentID }));
    call.on('cancelled', () => mux.close(new Error(`${name} went away`)));
    mux.once('close', (reason: Error) => {
      registry.remove(backend);
      if (!call.destroyed) call.end();
      log.info('agent disconnected', { agentID, peer, reason: reason.message });
    });
  };
}
