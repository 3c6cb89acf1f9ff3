/**
 * The accepting end of a packet stream: the agent on its stream to a server, or the server
 * on a client's ProxyService stream. Each DIAL_REQ goes to a dial handler (the agent dials
 * the target; the server's frontend dials through an agent); a successful dial gets a
 * connectID, counting from 1 on each stream, and is spliced to a TunnelConnection.
 */
import type { Duplex } from 'node:stream';
import { PacketType, closeResponse, dialResponse, drain, type DialRequestPacket, type KnownPacket } from '../wire/packet.js';
import { ERR_UNKNOWN_CONNECT_ID, ERR_UNRECOGNIZED_CONNECT_ID } from '../wire/protocol.js';
import { Multiplexer, type MultiplexerOptions } from './multiplexer.js';
import type { PacketStream } from './packet-stream.js';
import type { TunnelConnection } from './tunnel-connection.js';
import { isOrdinaryClose, splice } from './splice.js';

/**
 * What a dial opens: a stream to splice with the tunneled connection (a target socket, a
 * connection through an agent), or a function that takes the tunneled connection over
 * (the server's reverse proxy serves HTTP on pushed connections itself).
 */
export type DialTarget = Duplex | ((conn: TunnelConnection) => void);

/**
 * Opens what a DIAL_REQ asks for. A rejection's message is sent to the dialer as the
 * DIAL_RSP error text; `signal` aborts when the dialer cancels (DIAL_CLS) or the stream ends.
 */
export type DialHandler = (request: DialRequestPacket, signal: AbortSignal) => Promise<DialTarget>;

export class AcceptingMux extends Multiplexer {
  private nextConnectID = 1n;
  private readonly pending = new Map<bigint, AbortController>();
  private drainReceived = false;

  constructor(stream: PacketStream, private readonly dialHandler: DialHandler, options: MultiplexerOptions = {}) {
    super(stream, options);
  }

  /** Tells the dialing end to route no new dials here (the agent is shutting down). */
  sendDrain(): void {
    this.sendControl(drain());
  }

  /**
   * The dialing end sent DRAIN: it is shutting down (our extension, sent only to agents that
   * announced MD_SERVER_DRAIN). Its open connections go on; new ones should go elsewhere.
   */
  get draining(): boolean {
    return this.drainReceived;
  }

  closeLocally(conn: TunnelConnection): void {
    this.sendControl(closeResponse(conn.connectID));
  }

  protected handle(packet: KnownPacket): boolean {
    switch (packet.type) {
      case PacketType.DIAL_REQ:
        void this.accept(packet);
        return true;
      case PacketType.CLOSE_REQ: {
        const conn = this.connections.get(packet.connectID);
        if (conn) {
          this.sendControl(closeResponse(packet.connectID));
          conn.closeFromPeer();
        } else {
          // Both ends closing at once is no fault of the peer's; the answer is the same.
          if (!this.closedHere(packet.connectID)) this.strayPackets++;
          this.sendControl(closeResponse(packet.connectID, ERR_UNKNOWN_CONNECT_ID));
        }
        return true;
      }
      case PacketType.DRAIN:
        if (!this.drainReceived) {
          this.drainReceived = true;
          this.emit('drain-requested');
        }
        return true;
      case PacketType.DIAL_CLS: {
        const controller = this.pending.get(packet.random);
        this.pending.delete(packet.random);
        controller?.abort(new Error('the dialer cancelled the dial'));
        return true;
      }
      default:
        return false;
    }
  }

  protected strayData(connectID: bigint): void {
    // DATA the peer sent before our close reached it: dropped, and not answered, since the
    // peer has our close already or will have it next.
    if (this.closedHere(connectID)) return;
    this.strayPackets++;
    this.sendControl(closeResponse(connectID, ERR_UNRECOGNIZED_CONNECT_ID));
  }

  /** Whether `connectID` was a connection of this stream (ids count up and are never reused). */
  private closedHere(connectID: bigint): boolean {
    return connectID > 0n && connectID < this.nextConnectID;
  }

  protected pendingDialCount(): number {
    return this.pending.size;
  }

  protected onShutdown(reason: Error): void {
    for (const controller of this.pending.values()) controller.abort(reason);
    this.pending.clear();
  }

  private async accept(request: DialRequestPacket): Promise<void> {
    const { random, address } = request;
    if (this.pending.has(random)) {
      this.countStray(request, 'DIAL_REQ repeats a pending dial id');
      return;
    }
    const controller = new AbortController();
    this.pending.set(random, controller);
    let target: DialTarget;
    try {
      target = await this.dialHandler(request, controller.signal);
    } catch (err) {
      if (this.pending.delete(random)) this.sendControl(dialResponse(random, 0n, (err as Error).message || String(err)));
      return;
    }
    if (!this.pending.delete(random) || controller.signal.aborted) {
      if (typeof target !== 'function') target.destroy(); // cancelled while dialing, or the stream ended
      return;
    }
    const connectID = this.nextConnectID++;
    const conn = this.newConnection(connectID, address);
    this.sendControl(dialResponse(random, connectID));
    if (typeof target === 'function') {
      target(conn);
      return;
    }
    splice(conn, target, (err) => {
      if (!isOrdinaryClose(err)) this.log.debug('tunneled connection failed', { stream: this.name, connectID, address, err });
    });
  }
}
