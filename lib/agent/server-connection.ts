/**
 * One agent -> server stream: a gRPC channel, the Connect call with the agent's metadata,
 * the server's serverid/servercount headers, and the AcceptingMux that serves dials.
 */
import * as grpc from '@grpc/grpc-js';
import { AcceptingMux, type DialHandler } from '../mux/accepting-mux.js';
import { drain } from '../wire/packet.js';
import { AGENT_CONNECT_PATH, MD_AGENT_ID, MD_AGENT_IDENTIFIERS, MD_SERVER_COUNT, MD_SERVER_ID } from '../wire/protocol.js';
import { asPacketStream, deserializePacket, serializePacket } from '../transport/services.js';
import { announceFlowControl, negotiateFlowControl } from '../transport/flow-control-metadata.js';
import type { Logger } from '../observe/log.js';

const HEADERS_TIMEOUT_MS = 15_000;

export interface ServerConnectionOptions {
  target: string;
  credentials: grpc.ChannelCredentials;
  channelOptions: grpc.ChannelOptions;
  agentID: string;
  agentIdentifiers: string;
  connectionWindow?: number;
  dialHandler: DialHandler;
  log: Logger;
}

export class ServerConnection {
  constructor(
    readonly serverID: string,
    readonly serverCount: number,
    readonly mux: AcceptingMux,
    private readonly client: grpc.Client,
  ) {
    mux.once('close', () => client.close());
  }

  /** Tells the server to send no new dials (DRAIN), for a graceful shutdown. */
  drain(): void {
    this.mux.sendDrain();
  }

  close(): void {
    this.mux.close(new Error('the agent closed the stream'));
    this.client.close();
  }

  /** Opens the stream and waits for the server's headers. */
  static async open(o: ServerConnectionOptions): Promise<ServerConnection> {
    const client = new grpc.Client(o.target, o.credentials, o.channelOptions);
    const metadata = new grpc.Metadata();
    metadata.set(MD_AGENT_ID, o.agentID);
    metadata.set(MD_AGENT_IDENTIFIERS, o.agentIdentifiers);
    if (o.connectionWindow) announceFlowControl(metadata, o.connectionWindow);
    const call = client.makeBidiStreamRequest(AGENT_CONNECT_PATH, serializePacket, deserializePacket, metadata);
    // Errors before the headers reject below; later ones reach the mux, which closes.
    call.on('error', () => {});
    try {
      const headers = await new Promise<grpc.Metadata>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no headers from the server within ${HEADERS_TIMEOUT_MS} ms`)), HEADERS_TIMEOUT_MS);
        call.once('metadata', (md: grpc.Metadata) => { clearTimeout(timer); resolve(md); });
        call.once('error', (err: grpc.ServiceError) => { clearTimeout(timer); reject(new Error(err.details || err.message)); });
      });
      const serverID = headers.get(MD_SERVER_ID);
      const serverCount = headers.get(MD_SERVER_COUNT);
      if (serverID.length !== 1) throw new Error(`expected one server ID in the headers, got ${serverID.length}`);
      if (serverCount.length !== 1 || !/^\d+$/.test(String(serverCount[0]))) throw new Error(`expected one server count in the headers, got ${JSON.stringify(serverCount)}`);
      const windows = negotiateFlowControl(headers, o.connectionWindow);
      const mux = new AcceptingMux(asPacketStream(call), o.dialHandler, {
        name: `server ${String(serverID[0])} at ${o.target}`, flowControl: windows, log: o.log,
      });
      return new ServerConnection(String(serverID[0]), Math.max(1, Number(serverCount[0])), mux, client);
    } catch (err) {
      call.cancel();
      client.close();
      throw new Error(`cannot open a tunnel stream to ${o.target}: ${(err as Error).message}`);
    }
  }
}
