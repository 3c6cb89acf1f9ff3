/**
 * The dialing end of a packet stream: the server on an agent's stream, or a client on a
 * ProxyService stream. It sends DIAL_REQ and turns each successful DIAL_RSP into a
 * TunnelConnection.
 */
import { PacketType, closeDial, closeRequest, closeResponse, dialRequest, dialResponse, drain, type KnownPacket } from '../wire/packet.js';
import { ERR_UNKNOWN_CONNECT_ID } from '../wire/protocol.js';
import { Multiplexer, type MultiplexerOptions } from './multiplexer.js';
import type { PacketStream } from './packet-stream.js';
import type { TunnelConnection } from './tunnel-connection.js';
import { randomDialId } from './dial-id.js';

/** The reference client waits 30 s for DIAL_RSP and 10 s for CLOSE_RSP. */
export const DEFAULT_DIAL_TIMEOUT_MS = 30_000;
export const DEFAULT_CLOSE_TIMEOUT_MS = 10_000;

/** A dial that the far end refused, or that got no answer. `message` is the peer's text. */
export class DialError extends Error {
  constructor(message: string, readonly address: string, readonly kind: 'refused' | 'timeout' | 'closed' = 'refused') {
    super(message);
    this.name = 'DialError';
  }
}

export interface DialOptions {
  /** The dial id; a random one by default. A clash with a pending dial picks a new one. */
  random?: bigint;
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Who asks (a frontend client), shown by the admin endpoints. */
  client?: string;
}

export interface DialingMuxOptions extends MultiplexerOptions {
  closeTimeoutMs?: number;
}

interface PendingDial {
  address: string;
  client?: string;
  resolve(conn: TunnelConnection): void;
  reject(err: DialError): void;
  cleanup(): void;
}

export class DialingMux extends Multiplexer {
  private readonly pending = new Map<bigint, PendingDial>();
  /** Connections we closed, until their CLOSE_RSP: DATA still in flight is dropped quietly. */
  private readonly closing = new Map<bigint, NodeJS.Timeout>();
  private readonly closeTimeoutMs: number;
  private drainRequested = false;

  constructor(stream: PacketStream, options: DialingMuxOptions = {}) {
    super(stream, options);
    this.closeTimeoutMs = options.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS;
  }

  /** The peer sent DRAIN: it is shutting down and should get no new dials. */
  get draining(): boolean {
    return this.drainRequested;
  }

  /**
   * Tells the accepting end (an agent that announced MD_SERVER_DRAIN) that this end is
   * shutting down: its open connections go on, new ones should go to another server.
   */
  sendDrain(): void {
    if (!this.isClosed) this.sendControl(drain());
  }

  dial(address: string, options: DialOptions = {}): Promise<TunnelConnection> {
    if (this.isClosed) return Promise.reject(new DialError(`${this.name} is closed`, address, 'closed'));
    let random = options.random ?? randomDialId();
    while (this.pending.has(random)) random = randomDialId();
    const timeoutMs = options.timeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS;
    return new Promise<TunnelConnection>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.abandon(random, new DialError(`no answer from ${this.name} to the dial of ${address} within ${timeoutMs} ms`, address, 'timeout'));
      }, timeoutMs);
      const onAbort = () => this.abandon(random, new DialError(`dial of ${address} was cancelled`, address, 'closed'));
      options.signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.set(random, {
        address,
        client: options.client,
        resolve,
        reject,
        cleanup: () => {
          clearTimeout(timer);
          options.signal?.removeEventListener('abort', onAbort);
        },
      });
      this.sendControl(dialRequest(address, random));
    });
  }

  closeLocally(conn: TunnelConnection): void {
    this.sendControl(closeRequest(conn.connectID));
    const timer = setTimeout(() => this.closing.delete(conn.connectID), this.closeTimeoutMs);
    timer.unref();
    this.closing.set(conn.connectID, timer);
  }

  protected handle(packet: KnownPacket): boolean {
    switch (packet.type) {
      case PacketType.DIAL_RSP: {
        const dial = this.settle(packet.random);
        if (!dial) {
          // The dialer gave up already: close what the far end opened so it does not leak.
          if (packet.connectID !== 0n && !packet.error) this.sendControl(closeRequest(packet.connectID));
          this.countStray(packet, 'DIAL_RSP for no pending dial');
        } else if (packet.error) {
          dial.reject(new DialError(packet.error, dial.address));
        } else if (this.connections.has(packet.connectID) || packet.connectID === 0n) {
          dial.reject(new DialError(`${this.name} answered with connectID ${packet.connectID}, which is already in use`, dial.address));
        } else {
          dial.resolve(this.newConnection(packet.connectID, dial.address, dial.client));
        }
        return true;
      }
      case PacketType.CLOSE_RSP: {
        const conn = this.connections.get(packet.connectID);
        if (conn) conn.closeFromPeer();
        else if (!this.endClosing(packet.connectID)) this.countStray(packet, 'CLOSE_RSP for an unknown connectID');
        return true;
      }
      case PacketType.CLOSE_REQ: {
        const conn = this.connections.get(packet.connectID);
        this.sendControl(closeResponse(packet.connectID, conn ? '' : ERR_UNKNOWN_CONNECT_ID));
        conn?.closeFromPeer();
        return true;
      }
      case PacketType.DIAL_CLS: {
        const dial = this.settle(packet.random);
        dial?.reject(new DialError(`dial of ${dial.address} was closed by ${this.name}`, dial.address, 'closed'));
        return true;
      }
      case PacketType.DRAIN:
        if (!this.drainRequested) {
          this.drainRequested = true;
          this.emit('drain-requested');
        }
        return true;
      case PacketType.DIAL_REQ:
        this.sendControl(dialResponse(packet.random, 0n, 'this end of the tunnel does not accept dials'));
        return false;
      default:
        return false;
    }
  }

  protected strayData(connectID: bigint): void {
    if (this.closing.has(connectID)) return;
    this.strayPackets++;
    this.sendControl(closeRequest(connectID));
  }

  protected pendingDialCount(): number {
    return this.pending.size;
  }

  protected onShutdown(reason: Error): void {
    for (const [random, dial] of [...this.pending]) {
      this.pending.delete(random);
      dial.cleanup();
      dial.reject(new DialError(`${this.name} closed before answering the dial of ${dial.address}: ${reason.message}`, dial.address, 'closed'));
    }
    for (const timer of this.closing.values()) clearTimeout(timer);
    this.closing.clear();
  }

  private settle(random: bigint): PendingDial | undefined {
    const dial = this.pending.get(random);
    if (!dial) return undefined;
    this.pending.delete(random);
    dial.cleanup();
    return dial;
  }

  private abandon(random: bigint, err: DialError): void {
    const dial = this.settle(random);
    if (!dial) return;
    this.sendControl(closeDial(random));
    dial.reject(err);
  }

  private endClosing(connectID: bigint): boolean {
    const timer = this.closing.get(connectID);
    if (!timer) return false;
    clearTimeout(timer);
    this.closing.delete(connectID);
    return true;
  }
}
