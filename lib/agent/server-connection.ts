/**
 * One agent -> server stream: a gRPC channel, the Connect call with the agent's metadata,
 * the server's serverid/servercount headers, and the AcceptingMux that serves dials.
 */
import * as grpc from '@grpc/grpc-js';
import { AcceptingMux, type DialHandler } from '../mux/accepting-mux.js';
import type { KnownPacket, Packet } from '../wire/packet.js';
import { joinPacketStreams } from '../mux/packet-stream.js';
import { AGENT_CONNECT_PATH, MD_AGENT_ID, MD_AGENT_IDENTIFIERS, MD_DOWNLINK_FOR, MD_SERVER_COUNT, MD_SERVER_ID, MD_SPLIT_STREAMS } from '../wire/protocol.js';
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
  /**
   * Channel options of a second connection for the server -> agent direction; when given,
   * the agent asks the server to split the directions (MD_SPLIT_STREAMS).
   */
  downlinkChannelOptions?: grpc.ChannelOptions;
  log: Logger;
}

type ConnectCall = grpc.ClientDuplexStream<KnownPacket, Packet>;

/** Opens a Connect call and waits for its response headers (or its failure). */
async function openCall(client: grpc.Client, metadata: grpc.Metadata): Promise<{ call: ConnectCall; headers: grpc.Metadata }> {
  const call = client.makeBidiStreamRequest(AGENT_CONNECT_PATH, serializePacket, deserializePacket, metadata);
  // Errors before the headers reject below; later ones reach the mux, which closes.
  call.on('error', () => {});
  try {
    const headers = await new Promise<grpc.Metadata>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no headers from the server within ${HEADERS_TIMEOUT_MS} ms`)), HEADERS_TIMEOUT_MS);
      call.once('metadata', (md: grpc.Metadata) => { clearTimeout(timer); resolve(md); });
      call.once('error', (err: grpc.ServiceError) => { clearTimeout(timer); reject(new Error(err.details || err.message)); });
    });
    return { call, headers };
  } catch (err) {
    call.cancel();
    throw err;
  }
}

export class ServerConnection {
  constructor(
    readonly serverID: string,
    readonly serverCount: number,
    readonly mux: AcceptingMux,
    private readonly clients: grpc.Client[],
  ) {
    mux.once('close', () => this.closeClients());
  }

  /** Whether the server -> agent direction has its own connection. */
  get split(): boolean {
    return this.clients.length === 2;
  }

  /** Tells the server to send no new dials (DRAIN), for a graceful shutdown. */
  drain(): void {
    this.mux.sendDrain();
  }

  close(): void {
    this.mux.close(new Error('the agent closed the stream'));
    this.closeClients();
  }

  private closeClients(): void {
    for (const client of this.clients) client.close();
  }

  /**
   * Opens the stream, waits for the server's headers and, when the server agrees to split
   * the directions, opens the downlink on a connection of its own.
   */
  static async open(o: ServerConnectionOptions): Promise<ServerConnection> {
    const clients = [new grpc.Client(o.target, o.credentials, o.channelOptions)];
    const metadata = new grpc.Metadata();
    metadata.set(MD_AGENT_ID, o.agentID);
    metadata.set(MD_AGENT_IDENTIFIERS, o.agentIdentifiers);
    if (o.connectionWindow) announceFlowControl(metadata, o.connectionWindow);
    if (o.downlinkChannelOptions) metadata.set(MD_SPLIT_STREAMS, '1');
    const calls: ConnectCall[] = [];
    try {
      const { call, headers } = await openCall(clients[0]!, metadata);
      calls.push(call);
      const serverID = headers.get(MD_SERVER_ID);
      const serverCount = headers.get(MD_SERVER_COUNT);
      if (serverID.length !== 1) throw new Error(`expected one server ID in the headers, got ${serverID.length}`);
      if (serverCount.length !== 1 || !/^\d+$/.test(String(serverCount[0]))) throw new Error(`expected one server count in the headers, got ${JSON.stringify(serverCount)}`);
      const windows = negotiateFlowControl(headers, o.connectionWindow);
      let stream = asPacketStream(call);
      const token = headers.get(MD_SPLIT_STREAMS)[0];
      if (o.downlinkChannelOptions && typeof token === 'string') {
        const downlinkClient = new grpc.Client(o.target, o.credentials, o.downlinkChannelOptions);
        clients.push(downlinkClient);
        const downMetadata = new grpc.Metadata();
        downMetadata.set(MD_AGENT_ID, o.agentID);
        downMetadata.set(MD_DOWNLINK_FOR, token);
        const downlink = await openCall(downlinkClient, downMetadata).catch((err: Error) => {
          throw new Error(`the downlink stream was refused (${err.message})`);
        });
        calls.push(downlink.call);
        stream = joinPacketStreams(asPacketStream(downlink.call), stream);
      }
      const mux = new AcceptingMux(stream, o.dialHandler, {
        name: `server ${String(serverID[0])} at ${o.target}`, flowControl: windows, log: o.log,
      });
      return new ServerConnection(String(serverID[0]), Math.max(1, Number(serverCount[0])), mux, clients);
    } catch (err) {
      for (const call of calls) call.cancel();
      for (const client of clients) client.close();
      throw new Error(`cannot open a tunnel stream to ${o.target}: ${(err as Error).message}`);
    }
  }
}
