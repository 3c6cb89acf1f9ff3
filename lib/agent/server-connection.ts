/**
 * One agent -> server stream: an HTTP/2 connection, the Connect call with the agent's
 * metadata, the server's serverid/servercount headers, and the AcceptingMux that serves dials.
 */
import type http2 from 'node:http2';
import { AcceptingMux, type DialHandler } from '../mux/accepting-mux.js';
import { DialingMux } from '../mux/dialing-mux.js';
import { joinPacketStreams, type PacketStream } from '../mux/packet-stream.js';
import {
  AGENT_CONNECT_PATH, MD_AGENT_ID, MD_AGENT_IDENTIFIERS, MD_AUTHORIZATION, MD_DOWNLINK_FOR, MD_PUSH, MD_PUSH_FOR, MD_SERVER_COUNT, MD_SERVER_DRAIN, MD_SERVER_ID, MD_SPLIT_STREAMS,
} from '../wire/protocol.js';
import { GrpcCallError, closeSession, connect, openCall } from '../transport/grpc-client.js';
import { GrpcStatus, KEEPALIVE, Metadata } from '../transport/grpc-metadata.js';
import { announceFlowControl, negotiateFlowControl } from '../transport/flow-control-metadata.js';
import { agentStreamWindow } from '../transport/http2-windows.js';
import type { TlsMaterial } from '../pki/tls-source.js';
import type { Logger } from '../observe/log.js';

const HEADERS_TIMEOUT_MS = 15_000;
const SESSION_CLOSE_GRACE_MS = 5_000;

export interface ServerConnectionOptions {
  target: string;
  tls: TlsMaterial;
  /** Name the server certificate must hold (default: the host of `target`). */
  serverName?: string;
  agentID: string;
  agentIdentifiers: string;
  /** Sent as `authorization: Bearer <token>` when the server authenticates agents by token. */
  bearerToken?: string;
  connectionWindow?: number;
  dialHandler: DialHandler;
  /**
   * Ask the server to carry the server -> agent direction on a second connection of its
   * own (MD_SPLIT_STREAMS), whose receive window is raised.
   */
  split: boolean;
  /** Ask for a push stream (MD_PUSH), for connections from the managed cluster to the hub's routes. */
  push?: boolean;
  log: Logger;
}

export class ServerConnection {
  /** Where this agent dials the server's routes for its push listeners, when the server agreed. */
  push?: DialingMux;
  /** The agent asked for a push stream and the server did not offer one (a reference server). */
  pushDeclined = false;

  constructor(
    readonly serverID: string,
    readonly serverCount: number,
    readonly mux: AcceptingMux,
    private readonly sessions: http2.ClientHttp2Session[],
  ) {
    mux.once('close', (reason: Error) => {
      this.push?.close(reason);
      this.closeSessions();
    });
  }

  /** Whether the server -> agent direction has its own connection. */
  get split(): boolean {
    return this.sessions.length === 2;
  }

  /** Tells the server to send no new dials (DRAIN), for a graceful shutdown. */
  drain(): void {
    this.mux.sendDrain();
  }

  /** The server sent DRAIN (it is shutting down): its connections go on, new ones should come through other servers. */
  get serverDraining(): boolean {
    return this.mux.draining;
  }

  close(): void {
    this.push?.close(new Error('the agent closed the stream'));
    this.mux.close(new Error('the agent closed the stream'));
    this.closeSessions();
  }

  /** Lets what is queued go out, but gives a peer that stopped reading only so long. */
  private closeSessions(): void {
    for (const session of this.sessions) closeSession(session, SESSION_CLOSE_GRACE_MS);
  }

  /**
   * Opens the stream, waits for the server's headers and, when the server agrees to split
   * the directions, opens the downlink on a connection of its own.
   */
  static async open(o: ServerConnectionOptions): Promise<ServerConnection> {
    const sessions: http2.ClientHttp2Session[] = [];
    const streams: PacketStream[] = [];
    const connectTo = async (receiveWindow?: number) => {
      const session = await connect({
        target: o.target, tls: o.tls, serverName: o.serverName, receiveWindow, timeoutMs: HEADERS_TIMEOUT_MS, keepaliveMs: KEEPALIVE.agentMs,
        onDead: (reason) => o.log.warn('the tunnel server connection is gone', { server: o.target, reason }),
      });
      sessions.push(session);
      return session;
    };
    const metadata = new Metadata();
    metadata.set(MD_AGENT_ID, o.agentID);
    metadata.set(MD_AGENT_IDENTIFIERS, o.agentIdentifiers);
    if (o.bearerToken) metadata.set(MD_AUTHORIZATION, `Bearer ${o.bearerToken}`);
    if (o.connectionWindow) announceFlowControl(metadata, o.connectionWindow);
    if (o.split) metadata.set(MD_SPLIT_STREAMS, '1');
    if (o.push) metadata.set(MD_PUSH, '1');
    metadata.set(MD_SERVER_DRAIN, '1');
    try {
      const { stream: uplink, headers } = await openCall(await connectTo(), AGENT_CONNECT_PATH, metadata, HEADERS_TIMEOUT_MS);
      streams.push(uplink);
      const serverID = headers.get(MD_SERVER_ID);
      const serverCount = headers.get(MD_SERVER_COUNT);
      if (serverID.length !== 1) throw new Error(`expected one server ID in the headers, got ${serverID.length}`);
      if (serverCount.length !== 1 || !/^\d+$/.test(String(serverCount[0]))) throw new Error(`expected one server count in the headers, got ${JSON.stringify(serverCount)}`);
      const windows = negotiateFlowControl(headers, o.connectionWindow);
      let stream: PacketStream = uplink;
      const token = headers.get(MD_SPLIT_STREAMS)[0];
      if (o.split && token !== undefined) {
        const downMetadata = new Metadata();
        downMetadata.set(MD_AGENT_ID, o.agentID);
        downMetadata.set(MD_DOWNLINK_FOR, token);
        const downlink = await openDownlink(connectTo, sessions, downMetadata, agentStreamWindow(o.connectionWindow), Math.max(1, Number(serverCount[0])));
        streams.push(downlink.stream);
        stream = joinPacketStreams(downlink.stream, uplink);
      }
      const mux = new AcceptingMux(stream, o.dialHandler, {
        name: `server ${serverID[0]} at ${o.target}`, flowControl: windows, log: o.log,
      });
      const connection = new ServerConnection(serverID[0], Math.max(1, Number(serverCount[0])), mux, sessions);
      const pushToken = headers.get(MD_PUSH)[0];
      if (o.push && pushToken === undefined) {
        connection.pushDeclined = true;
      } else if (o.push && pushToken !== undefined) {
        connection.push = await openPushStream(sessions[0], o, String(pushToken), serverID[0]).catch((err: Error) => {
          o.log.warn('the tunnel server refused the push stream: the push listeners answer 503 until a server takes it', { serverID: serverID[0], reason: err.message });
          return undefined;
        });
      }
      return connection;
    } catch (err) {
      for (const stream of streams) stream.destroy();
      for (const session of sessions) session.destroy();
      throw new Error(`cannot open a tunnel stream to ${o.target}: ${(err as Error).message}`, { cause: err });
    }
  }
}

/** The push stream, on the agent stream's own connection: the agent dials here, the server answers. */
async function openPushStream(session: http2.ClientHttp2Session, o: ServerConnectionOptions, token: string, serverID: string): Promise<DialingMux> {
  const metadata = new Metadata();
  metadata.set(MD_AGENT_ID, o.agentID);
  metadata.set(MD_PUSH_FOR, token);
  if (o.connectionWindow) announceFlowControl(metadata, o.connectionWindow);
  const { stream, headers } = await openCall(session, AGENT_CONNECT_PATH, metadata, HEADERS_TIMEOUT_MS);
  return new DialingMux(stream, { name: `push stream to server ${serverID}`, flowControl: negotiateFlowControl(headers, o.connectionWindow), log: o.log });
}

/** The downlink never reached the server of its uplink (behind a load balancer): the next attempt carries both directions on one stream. */
export class DownlinkUnpairedError extends Error {
  constructor(readonly attempts: number, reason: string) {
    super(`the downlink stream did not reach the uplink's server in ${attempts} connection${attempts === 1 ? '' : 's'} (${reason})`);
    this.name = 'DownlinkUnpairedError';
  }
}

/**
 * The downlink, on a connection of its own. Behind a load balancer that connection may land
 * on another server, which answers NOT_FOUND; a new connection is tried until one reaches
 * the uplink's server, up to twice the server count (a round-robin balancer gets there
 * within the count, a random one almost always within twice it).
 */
async function openDownlink(
  connectTo: (receiveWindow?: number) => Promise<http2.ClientHttp2Session>,
  sessions: http2.ClientHttp2Session[],
  metadata: Metadata,
  receiveWindow: number | undefined,
  serverCount: number,
): Promise<{ stream: Awaited<ReturnType<typeof openCall>>['stream'] }> {
  const attempts = serverCount === 1 ? 1 : 2 * serverCount;
  for (let attempt = 1; ; attempt++) {
    const session = await connectTo(receiveWindow);
    try {
      return await openCall(session, AGENT_CONNECT_PATH, metadata, HEADERS_TIMEOUT_MS);
    } catch (err) {
      const elsewhere = err instanceof GrpcCallError && err.code === GrpcStatus.NOT_FOUND;
      if (!elsewhere) throw new Error(`the downlink stream was refused (${(err as Error).message})`, { cause: err });
      // That connection reached another server: it carries nothing of ours.
      sessions.splice(sessions.indexOf(session), 1);
      session.destroy();
      if (attempt >= attempts) throw new DownlinkUnpairedError(attempt, (err as Error).message);
    }
  }
}
