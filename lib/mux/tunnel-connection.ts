/**
 * One tunneled TCP connection as a Node Duplex. Writes become DATA packets on the
 * multiplexer's packet stream; DATA from the peer is pushed to the reader.
 *
 * Flow control: when both ends speak the WINDOW_UPDATE extension, a writer sends at most
 * `sendCredit` bytes ahead of what the peer's reader has consumed, and this side grants
 * credit back as its reader consumes, so a stalled reader holds at most one window in
 * memory and never holds up the shared stream. Against a reference peer (no credits) a
 * reader that falls a window behind pauses the whole packet stream instead, as the
 * reference does, so memory stays bounded either way.
 */
import { Duplex } from 'node:stream';
import { asBuffer } from '../wire/packet.js';

/** What a connection needs from its multiplexer. */
export interface ConnectionLink {
  readonly maxDataSize: number;
  /**
   * Sends the pieces, in order, as this connection's DATA (a transport may frame them as one
   * packet); calls `sent` once the shared stream can take more.
   */
  sendData(conn: TunnelConnection, pieces: readonly Buffer[], sent: () => void): void;
  /** Grants the peer `bytes` more of this connection's window. */
  sendWindowUpdate(conn: TunnelConnection, bytes: number): void;
  /** The local side ended or failed while the connection was open on the wire. */
  closeLocally(conn: TunnelConnection): void;
  /** The connection is gone: drop it from the table. */
  forget(conn: TunnelConnection): void;
  /** The connection has data to send and no credit left (counted for the metrics). */
  windowStalled?(conn: TunnelConnection): void;
  /** The peer broke the protocol on this connection (which then closes): say so where operators look. */
  peerViolation(conn: TunnelConnection, detail: string): void;
  /** Stop or restart reading the shared stream (reference peers only). */
  pauseReading(conn: TunnelConnection): void;
  resumeReading(conn: TunnelConnection): void;
}

export interface FlowControl {
  /** Bytes the peer lets us send before it grants more. */
  sendWindow: number;
  /** Bytes we let the peer send before we grant more. */
  receiveWindow: number;
}

export interface TunnelConnectionOptions {
  connectID: bigint;
  address: string;
  /** Who asked for the connection (a frontend client), for the admin endpoints. */
  client?: string;
  /** Set when both ends negotiated the WINDOW_UPDATE extension. */
  flowControl?: FlowControl;
  /** Without flow control: the buffered bytes at which the shared stream is paused. */
  pauseThreshold: number;
}

const READ_HIGH_WATER_MARK = 64 * 1024;
/** How far a connection's receive window may grow beyond the announced size. */
export const WINDOW_GROWTH = 4;
/**
 * Credit goes back in pieces of this share of the window. Finer grants keep the sender's
 * window fuller and its bursts shorter, which is what a long link needs (bench scenario
 * wan; docs/performance.md has the comparison with quarters). Small windows grant a
 * quarter, or 64 KiB, at a time, so that grants never shrink to a few packets' worth.
 */
export const GRANT_SHARE = 16;
const MIN_GRANT = 64 * 1024;
/** Room for what one socket read brings (a 64 KiB read is four TLS records) to go out together. */
const WRITE_HIGH_WATER_MARK = 64 * 1024;
/**
 * How long a closing connection may go without progress while it flushes: after the local
 * end or the peer closed it, a reader that never drains (or a window that never reopens)
 * would otherwise hold the connection and its buffers forever. A flush that moves, however
 * slowly, is never cut short.
 */
export const CLOSE_LINGER_MS = 30_000;

export class TunnelConnection extends Duplex {
  readonly connectID: bigint;
  readonly address: string;
  readonly client?: string;
  /** When the connection opened (ms since the epoch). */
  readonly openedAt = Date.now();
  /** Payload bytes handed to the link to send. */
  bytesSent = 0;
  /** Times this connection waited for the peer's window. */
  windowStalls = 0;

  private readonly link: ConnectionLink;
  private readonly flowControl?: FlowControl;
  private readonly pauseThreshold: number;
  /** Open on the wire: neither side has sent its close packet yet. */
  private wireOpen = true;
  private pausedStream = false;

  private lingerTimer?: NodeJS.Timeout;
  /** Bytes sent and bytes read so far: what the linger watches for progress. */
  private moved = 0;
  private movedAtLastLook = 0;
  private sendCredit: number;
  /** The write being sent: its pieces not sent yet, and their length. */
  private pending?: { pieces: Buffer[]; bytes: number; callback: (err?: Error | null) => void };
  private sending = false;

  /** Bytes received from the peer, and bytes granted back, for WINDOW_UPDATE. */
  private received = 0;
  private granted = 0;
  /** Our receive window: the announced size, grown while the reader keeps up. */
  private window: number;
  /** What the reader had consumed when the window last grew (or the connection opened). */
  private grownAt = 0;
  private readonly maxWindow: number;

  constructor(link: ConnectionLink, options: TunnelConnectionOptions) {
    super({
      readableHighWaterMark: READ_HIGH_WATER_MARK,
      writableHighWaterMark: WRITE_HIGH_WATER_MARK,
      allowHalfOpen: true,
    });
    this.link = link;
    this.connectID = options.connectID;
    this.address = options.address;
    this.client = options.client;
    this.flowControl = options.flowControl;
    this.pauseThreshold = options.pauseThreshold;
    this.sendCredit = options.flowControl?.sendWindow ?? Number.POSITIVE_INFINITY;
    this.window = options.flowControl?.receiveWindow ?? 0;
    this.maxWindow = this.window * WINDOW_GROWTH;
  }

  get isOpenOnWire(): boolean {
    return this.wireOpen;
  }

  /** Payload bytes received from the peer. */
  get bytesReceived(): number {
    return this.received;
  }

  /** open, or closing: one side has sent its close and what is left is being flushed. */
  get state(): 'open' | 'closing' {
    return this.wireOpen ? 'open' : 'closing';
  }

  /** With flow control: the bytes this end may still send, and the window it gives the peer. */
  get windows(): { sendCredit: number; receiveWindow: number } | undefined {
    return this.flowControl ? { sendCredit: this.sendCredit, receiveWindow: this.window } : undefined;
  }

  /** Bytes waiting in this connection for its reader. */
  get bufferedBytes(): number {
    return this.readableLength;
  }

  // ---- called by the multiplexer ------------------------------------------------------

  /**
   * DATA from the peer. With flow control, a peer that sends beyond the window it was given
   * would have this connection buffer without bound: the connection closes instead, and the
   * others on the stream go on.
   */
  deliver(data: Uint8Array): void {
    if (!this.wireOpen || this.destroyed) return;
    this.received += data.byteLength;
    // The peer may send what it was granted (the bytes our reader consumed) plus one window.
    const allowed = this.granted + this.window;
    if (this.flowControl && this.received > allowed) {
      const detail = `the peer sent ${this.received - allowed} bytes beyond the flow-control window it was given`;
      this.link.peerViolation(this, detail);
      this.destroy(new Error(`connection ${this.connectID} to ${this.address}: ${detail}`));
      return;
    }
    this.push(asBuffer(data));
    if (!this.flowControl && !this.pausedStream && this.readableLength >= this.pauseThreshold) {
      this.pausedStream = true;
      this.link.pauseReading(this);
    }
  }

  /** WINDOW_UPDATE from the peer. */
  grantCredit(bytes: number): void {
    this.sendCredit += bytes;
    this.pump();
  }

  /**
   * The peer closed the connection (CLOSE_RSP to a dialer, CLOSE_REQ to an acceptor). The
   * reader still gets everything that came before; once it has it all, the connection
   * closes, as a socket does when its peer ends. What is written meanwhile is held, not
   * sent (the peer has forgotten the connection) and not completed either, so that a
   * writer stops instead of spinning on writes that go nowhere.
   */
  closeFromPeer(): void {
    if (!this.wireOpen) return;
    this.wireOpen = false;
    this.link.forget(this);
    this.releaseStream();
    this.once('end', () => this.destroy());
    this.endReadable();
    this.linger();
  }

  /** The packet stream under this connection is gone. */
  abort(err: Error): void {
    this.wireOpen = false;
    this.destroy(err);
  }

  // ---- Duplex implementation -----------------------------------------------------------

  override _read(): void {
    this.releaseStream();
    if (this.flowControl) this.maybeGrant();
  }

  /**
   * Every consumption goes through read() (flowing mode calls it too), so credit is granted
   * here: _read alone is not enough, because a Readable calls it once and then waits for a
   * push, which the peer cannot send until it gets the credit.
   */
  override read(size?: number): ReturnType<Duplex['read']> {
    const chunk = super.read(size) as Buffer | null;
    if (chunk !== null) this.moved += chunk.byteLength;
    if (this.flowControl) this.maybeGrant();
    return chunk;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.pending = { pieces: [chunk], bytes: chunk.byteLength, callback };
    this.pump();
  }

  /**
   * Writes that queued up (corked for a loop turn, or while the previous one was in flight)
   * go out together, as they are, without copying: fewer, larger DATA packets cost less per
   * byte on every hop.
   */
  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (err?: Error | null) => void): void {
    const pieces: Buffer[] = [];
    let bytes = 0;
    for (const { chunk } of chunks) {
      if (chunk.byteLength === 0) continue;
      pieces.push(chunk);
      bytes += chunk.byteLength;
    }
    this.pending = { pieces, bytes, callback };
    this.pump();
  }

  /** Ending the writable side starts the close, whatever is still waiting to be sent. */
  override end(cb?: () => void): this;
  override end(chunk: unknown, cb?: () => void): this;
  override end(chunk: unknown, encoding?: BufferEncoding, cb?: () => void): this;
  override end(...args: unknown[]): this {
    this.linger();
    return (super.end as (...a: unknown[]) => this).apply(this, args);
  }

  /** The local side ended: no half-close exists, so the whole connection closes. */
  override _final(callback: (err?: Error | null) => void): void {
    this.closeLocallyOnce();
    this.endReadable();
    callback();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    clearTimeout(this.lingerTimer);
    this.closeLocallyOnce();
    this.releaseStream();
    this.link.forget(this);
    this.pending = undefined;
    callback(err);
  }

  // ---- internals ---------------------------------------------------------------------------

  /** Sends as much of the pending write as credit and the shared stream allow, while the wire is open. */
  private pump(): void {
    while (this.pending && !this.sending && this.wireOpen) {
      const pending = this.pending;
      if (pending.bytes === 0) {
        // An empty write has nothing to send; completing it lets the writes after it go.
        this.pending = undefined;
        pending.callback();
        continue;
      }
      const size = Math.min(pending.bytes, this.link.maxDataSize, this.sendCredit);
      if (size <= 0) {
        // Wait for WINDOW_UPDATE.
        this.windowStalls++;
        this.link.windowStalled?.(this);
        return;
      }
      this.sendCredit -= size;
      this.moved += size;
      this.bytesSent += size;
      const pieces = size === pending.bytes ? pending.pieces : takeBytes(pending, size);
      if (pieces === pending.pieces) this.pending = undefined;
      const { callback } = pending;
      this.sending = true;
      let synchronous = true;
      this.link.sendData(this, pieces, () => {
        this.sending = false;
        if (!this.pending) callback();
        else if (!synchronous) this.pump();
      });
      synchronous = false;
    }
  }

  /**
   * Ends the readable side. With nothing left to read, 'end' comes at once, even to a
   * reader that never read: a connection that only wrote would otherwise stay open.
   */
  private endReadable(): void {
    this.push(null);
    this.read(0);
  }

  /** Watches a closing connection: one that has moved no byte for CLOSE_LINGER_MS is destroyed. */
  private linger(): void {
    if (this.lingerTimer || this.destroyed) return;
    this.movedAtLastLook = this.moved;
    this.lingerTimer = setTimeout(() => {
      if (this.moved !== this.movedAtLastLook) {
        this.movedAtLastLook = this.moved;
        this.lingerTimer!.refresh();
        return;
      }
      const unsent = this.wireOpen ? this.writableLength : 0;
      const unread = this.readableLength;
      // Quietly when nothing is lost: the peer closed and the reader read it all.
      this.destroy(unsent + unread === 0 ? undefined : new Error(
        `connection ${this.connectID} to ${this.address}: closing made no progress for ${CLOSE_LINGER_MS / 1000} s ` +
        `(${unsent} bytes unsent, waiting for window or a congested stream; ${unread} unread): the ${unsent > 0 ? 'peer' : 'local'} reader stopped reading`));
    }, CLOSE_LINGER_MS);
    this.lingerTimer.unref();
  }

  private closeLocallyOnce(): void {
    if (!this.wireOpen) return;
    this.wireOpen = false;
    this.link.closeLocally(this);
  }

  private releaseStream(): void {
    if (!this.pausedStream) return;
    this.pausedStream = false;
    this.link.resumeReading(this);
  }

  /**
   * Grants the peer the bytes our reader has consumed, a GRANT_SHARE of the window at a
   * time, so that WINDOW_UPDATEs stay rare while the sender keeps nearly a whole window in
   * flight: a reader that keeps up never waits for credit.
   *
   * The window grows while the reader keeps up: when the reader consumed a quarter window
   * since the last growth and nothing waits in the buffer, the window (and not the reader)
   * may be what limits throughput, as on a long link, so it doubles, up to WINDOW_GROWTH
   * times the announced size. A reader that stalls holds at most the window it had grown to.
   */
  private maybeGrant(): void {
    if (!this.wireOpen) return;
    const consumed = this.received - this.readableLength;
    const owed = consumed - this.granted;
    if (owed < Math.max(this.window / GRANT_SHARE, Math.min(this.window / 4, MIN_GRANT))) return;
    let grant = owed;
    if (this.readableLength === 0 && this.window < this.maxWindow && consumed - this.grownAt >= this.window / 4) {
      const grown = Math.min(this.window * 2, this.maxWindow);
      grant += grown - this.window;
      this.window = grown;
      this.grownAt = consumed;
    }
    this.granted += owed;
    this.link.sendWindowUpdate(this, grant);
  }
}

/** Removes the first `size` bytes from the pending pieces (splitting one if need be) and returns them. */
function takeBytes(pending: { pieces: Buffer[]; bytes: number }, size: number): Buffer[] {
  const taken: Buffer[] = [];
  let left = size;
  while (left > 0) {
    const first = pending.pieces[0];
    if (first.byteLength <= left) {
      taken.push(first);
      pending.pieces.shift();
      left -= first.byteLength;
    } else {
      taken.push(first.subarray(0, left));
      pending.pieces[0] = first.subarray(left);
      left = 0;
    }
  }
  pending.bytes -= size;
  return taken;
}
