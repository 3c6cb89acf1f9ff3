/**
 * The table of tunneled connections on one packet stream, and the shared write path.
 *
 * Writing: control packets (dial, close, window updates) go straight onto the stream; DATA
 * waits for 'drain' when the stream is congested. Each connection has at most one DATA
 * packet waiting, and waiters are served first come first served, so the memory held here
 * is bounded by the number of connections and every connection gets its turn.
 *
 * Reading: packets are dispatched to connections by connectID. The two roles (the end that
 * dials and the end that accepts) differ only in how they answer dials, closes and strays:
 * see dialing-mux.ts and accepting-mux.ts.
 */
import { EventEmitter } from 'node:events';
import { PacketType, isUnknown, dataPacket, windowUpdate, packetTypeName, type KnownPacket, type Packet } from '../wire/packet.js';
import { DEFAULT_MAX_DATA_SIZE } from '../wire/protocol.js';
import { logger, type Logger } from '../observe/log.js';
import type { PacketStream } from './packet-stream.js';
import { TunnelConnection, type ConnectionLink, type FlowControl } from './tunnel-connection.js';

/** Without flow control, a connection whose reader is this far behind pauses the stream. */
export const DEFAULT_PAUSE_THRESHOLD = 1024 * 1024;

export interface MultiplexerOptions {
  /** Names the stream in logs, e.g. `agent=abc`. */
  name?: string;
  /** Largest DATA payload this end sends. */
  maxDataSize?: number;
  /** Per-connection windows; set only when both ends announced flow control. */
  flowControl?: FlowControl;
  /** See DEFAULT_PAUSE_THRESHOLD. */
  pauseThreshold?: number;
  log?: Logger;
}

/**
 * Counts that the streams of one kind share (e.g. every agent stream of a server), for the
 * metrics: plain arrays and fields, so that counting a packet is one increment.
 */
export interface StreamCounters {
  /** Packets received and sent, indexed by packet type. */
  received: Float64Array;
  sent: Float64Array;
  flow: FlowCounts;
  /** Counts a failure of the packet stream itself (not a clean end). */
  streamError?(err: Error): void;
}

/** What the flow-control extension did on a kind of stream. */
export interface FlowCounts {
  /** Times a connection had data to send and no credit left. */
  windowStalls: number;
  /** Bytes of window granted to the peer, and granted by it (WINDOW_UPDATE). */
  creditGranted: number;
  creditReceived: number;
}

export function newFlowCounts(): FlowCounts {
  return { windowStalls: 0, creditGranted: 0, creditReceived: 0 };
}

export interface MultiplexerStats {
  connections: number;
  /** Payload bytes received and sent on this stream's connections, closed ones included. */
  bytesReceived: number;
  bytesSent: number;
  /** Times a connection of this stream waited for the peer's window. */
  windowStalls: number;
  /** Bytes held in this stream's connections: received and not yet read, or written and not yet sent. */
  bufferedBytes: number;
  pendingDials: number;
  strayPackets: number;
  unknownPackets: number;
  /** Connections closed because the peer broke the protocol on them (sent beyond its window). */
  protocolViolations: number;
}

export abstract class Multiplexer extends EventEmitter implements ConnectionLink {
  readonly name: string;
  readonly maxDataSize: number;
  protected readonly log: Logger;
  protected readonly connections = new Map<bigint, TunnelConnection>();
  protected strayPackets = 0;
  protected unknownPackets = 0;
  private protocolViolations = 0;
  /** When this stream was opened (ms since the epoch). */
  readonly openedAt = Date.now();
  private counters?: StreamCounters;
  private windowStalls = 0;
  /** Bytes of the connections that are gone. */
  private closedBytesReceived = 0;
  private closedBytesSent = 0;

  private readonly pauseThreshold: number;
  private windows?: FlowControl;
  private readonly pausers = new Set<TunnelConnection>();
  private readonly waiting: Array<() => void> = [];
  /** The connection of the stray DATA just answered, while more of it follows directly. */
  private lastStrayID?: bigint;
  private congested = false;
  private closedWith?: Error;

  constructor(protected readonly stream: PacketStream, options: MultiplexerOptions = {}) {
    super();
    this.name = options.name ?? 'stream';
    this.maxDataSize = options.maxDataSize ?? DEFAULT_MAX_DATA_SIZE;
    this.windows = options.flowControl;
    this.pauseThreshold = options.pauseThreshold ?? DEFAULT_PAUSE_THRESHOLD;
    this.log = options.log ?? logger('mux');
    stream.on('data', (packet: Packet) => this.receive(packet));
    stream.on('drain', () => this.serveWaiting());
    stream.on('end', () => this.shutdown(new Error(`${this.name}: the peer ended the stream`)));
    stream.on('error', (err: Error) => {
      this.counters?.streamError?.(err);
      this.shutdown(err);
    });
    stream.on('close', () => this.shutdown(new Error(`${this.name}: the stream closed`)));
  }

  /** Per-connection windows, when both ends speak the flow-control extension. */
  get flowControl(): FlowControl | undefined {
    return this.windows;
  }

  /**
   * Sets the windows once the peer's announcement is known (a gRPC client learns it from the
   * response headers, which can arrive after the stream is opened). Applies to connections
   * opened from then on.
   */
  negotiateFlowControl(windows: FlowControl | undefined): void {
    this.windows = windows;
  }

  get isClosed(): boolean {
    return this.closedWith !== undefined;
  }

  /** Counts this stream's packets and flow control into `counters` from now on. */
  countInto(counters: StreamCounters): void {
    this.counters = counters;
  }

  /** The connections open on this stream. */
  openConnections(): IterableIterator<TunnelConnection> {
    return this.connections.values();
  }

  get stats(): MultiplexerStats {
    let bufferedBytes = 0;
    let bytesReceived = this.closedBytesReceived;
    let bytesSent = this.closedBytesSent;
    for (const conn of this.connections.values()) {
      bufferedBytes += conn.readableLength + conn.writableLength;
      bytesReceived += conn.bytesReceived;
      bytesSent += conn.bytesSent;
    }
    return {
      connections: this.connections.size,
      bytesReceived,
      bytesSent,
      windowStalls: this.windowStalls,
      bufferedBytes,
      pendingDials: this.pendingDialCount(),
      strayPackets: this.strayPackets,
      unknownPackets: this.unknownPackets,
      protocolViolations: this.protocolViolations,
    };
  }

  /** Ends the stream and every connection on it. */
  close(reason = new Error(`${this.name}: closed`)): void {
    this.shutdown(reason);
  }

  // ---- ConnectionLink ----------------------------------------------------------------------

  sendData(conn: TunnelConnection, pieces: readonly Buffer[], sent: () => void): void {
    if (this.isClosed) {
      sent();
      return;
    }
    const send = () => {
      // A connection destroyed while its DATA waited has sent its close already: DATA
      // after it would reach the peer as a stray, so it goes nowhere.
      if (conn.isOpenOnWire) this.writeData(conn.connectID, pieces);
      sent();
    };
    if (this.congested) this.waiting.push(send);
    else send();
  }

  sendWindowUpdate(conn: TunnelConnection, bytes: number): void {
    if (this.counters) this.counters.flow.creditGranted += bytes;
    this.sendControl(windowUpdate(conn.connectID, bytes));
  }

  windowStalled(): void {
    this.windowStalls++;
    if (this.counters) this.counters.flow.windowStalls++;
  }

  abstract closeLocally(conn: TunnelConnection): void;

  peerViolation(conn: TunnelConnection, detail: string): void {
    this.protocolViolations++;
    this.log.warn('closing a tunneled connection: the peer broke the protocol', { stream: this.name, connectID: conn.connectID, address: conn.address, detail });
  }

  forget(conn: TunnelConnection): void {
    if (this.connections.get(conn.connectID) === conn) {
      this.connections.delete(conn.connectID);
      this.closedBytesReceived += conn.bytesReceived;
      this.closedBytesSent += conn.bytesSent;
      this.emit('connection-closed', conn);
    }
  }

  pauseReading(conn: TunnelConnection): void {
    this.pausers.add(conn);
    this.stream.pause();
    this.log.debug('reader fell behind, pausing the stream', { stream: this.name, connectID: conn.connectID, buffered: conn.bufferedBytes });
  }

  resumeReading(conn: TunnelConnection): void {
    if (this.pausers.delete(conn) && this.pausers.size === 0 && !this.isClosed) this.stream.resume();
  }

  // ---- for the roles ----------------------------------------------------------------------

  /** Writes a control packet, bypassing the DATA queue (control packets are few and small). */
  protected sendControl(packet: KnownPacket): void {
    if (this.isClosed) return;
    this.write(packet);
  }

  protected newConnection(connectID: bigint, address: string, client?: string): TunnelConnection {
    const conn = new TunnelConnection(this, {
      connectID,
      address,
      client,
      flowControl: this.windows,
      pauseThreshold: this.pauseThreshold,
    });
    this.connections.set(connectID, conn);
    this.emit('connection', conn);
    return conn;
  }

  /** Role-specific packets; return false for a packet the role does not expect. */
  protected abstract handle(packet: KnownPacket): boolean;
  /** DATA or WINDOW_UPDATE for a connectID that is not in the table. */
  protected abstract strayData(connectID: bigint): void;
  protected abstract pendingDialCount(): number;
  /** Fails whatever the role has in flight when the stream goes away. */
  protected abstract onShutdown(reason: Error): void;

  protected countStray(packet: KnownPacket, detail: string): void {
    this.strayPackets++;
    this.log.debug('stray packet', { stream: this.name, type: packetTypeName(packet.type), detail });
  }

  // ---- internals ---------------------------------------------------------------------------

  private write(packet: KnownPacket): void {
    if (!this.stream.writable) return;
    if (this.counters) this.counters.sent[packet.type]++;
    if (!this.stream.write(packet)) this.congested = true;
  }

  /** One DATA packet per piece, written in one batch: a transport may frame a run of them as one. */
  private writeData(connectID: bigint, pieces: readonly Buffer[]): void {
    if (pieces.length === 1) {
      this.write(dataPacket(connectID, pieces[0]));
      return;
    }
    this.stream.cork();
    for (const piece of pieces) this.write(dataPacket(connectID, piece));
    this.stream.uncork();
  }

  private serveWaiting(): void {
    this.congested = false;
    while (!this.congested && this.waiting.length > 0) this.waiting.shift()!();
  }

  private receive(packet: Packet): void {
    if (this.isClosed) return;
    const counters = this.counters;
    if (counters && packet.type < counters.received.length) counters.received[packet.type]++;
    const lastStray = this.lastStrayID;
    this.lastStrayID = undefined;
    if (isUnknown(packet)) {
      this.unknownPackets++;
      this.log.debug('ignoring a packet of unknown type', { stream: this.name, type: packet.type });
      return;
    }
    switch (packet.type) {
      case PacketType.DATA: {
        const conn = this.connections.get(packet.connectID);
        if (conn) conn.deliver(packet.data);
        else if (packet.connectID !== 0n) {
          // One answer for a run: the pieces of one message arrive back to back.
          this.lastStrayID = packet.connectID;
          if (packet.connectID !== lastStray) this.strayData(packet.connectID);
        }
        return;
      }
      case PacketType.WINDOW_UPDATE: {
        const conn = this.connections.get(packet.connectID);
        if (packet.bytes <= 0n) this.countStray(packet, 'WINDOW_UPDATE grants no bytes');
        else if (conn) {
          if (this.counters) this.counters.flow.creditReceived += Number(packet.bytes);
          conn.grantCredit(Number(packet.bytes));
        }
        return;
      }
    }
    if (!this.handle(packet)) this.countStray(packet, 'not expected on this end of the stream');
  }

  private shutdown(reason: Error): void {
    if (this.isClosed) return;
    this.closedWith = reason;
    const connections = [...this.connections.values()];
    this.connections.clear();
    for (const conn of connections) conn.abort(reason);
    for (const waiter of this.waiting.splice(0)) waiter();
    this.onShutdown(reason);
    // Ending lets a gRPC server call finish with a status; a stream that cannot be ended
    // any more (errored, or ended already) is destroyed so nothing holds its buffers.
    if (this.stream.writable) this.stream.end();
    else if (!this.stream.destroyed) this.stream.destroy();
    this.emit('close', reason);
  }
}
