/**
 * gRPC's message framing on a node:http2 stream, for the agent stream's packets.
 *
 * Each message is a 5-byte prefix (compressed flag, big-endian length) and a Packet. DATA
 * packets, nearly all the traffic, are written as a small head and the payload where it
 * lies (no copy), and read without assembling the message: the payload is handed on piece
 * by piece as the HTTP/2 frames bring it, each piece a DATA packet of the same connection.
 * That is the same byte stream to the multiplexer, and it spares the copies and the
 * short-lived buffers that otherwise dominate the server's garbage collection.
 */
import { Duplex } from 'node:stream';
import http2 from 'node:http2';
import { decodePacket } from '../wire/codec.js';
import { encodeControlPacket } from '../wire/control-codec.js';
import { encodeDataHead, encodeDataPacket, readDataHead } from '../wire/data-codec.js';
import { PacketType, asBuffer, type DataPacket, type KnownPacket, type Packet } from '../wire/packet.js';
import { GrpcStatus } from './grpc-metadata.js';
import { DEFAULT_MAX_DATA_SIZE } from '../wire/protocol.js';

const PREFIX = 5;
/** Enough of a message to hold a DATA packet's head (tags, lengths, a ten-byte id). */
const DATA_HEAD_MAX = 32;
/** Below this a DATA payload is copied into its frame: one write is cheaper than two. */
const COPY_BELOW = 1024;
/**
 * How much may queue in the HTTP/2 stream before a writer waits for it to drain. Node's
 * stream reports itself full at its high-water mark (16 KiB by default, 64 KiB in the
 * binaries); waiting each time hands nghttp2 one packet at a time, while a little more lets
 * it send in larger batches (bench scenario bulk). Kept small: the queue is shared by every
 * connection on the stream.
 */
const SEND_QUEUE_BYTES = 256 * 1024;

/** The most payload consecutive DATA packets are joined into: one DATA packet's default size. */
const RUN_BYTES = DEFAULT_MAX_DATA_SIZE;

/** A message that breaks gRPC framing or the size limit: the stream cannot go on. */
export class GrpcFramingError extends Error {
  constructor(message: string, readonly code: number = GrpcStatus.INTERNAL) {
    super(message);
  }
}

/** The buffers that carry one packet as a gRPC message. */
export function framePacket(packet: KnownPacket): Buffer[] {
  if (packet.type === PacketType.DATA) {
    const { data } = packet;
    if (data.length < COPY_BELOW) return [withPrefix(encodeDataPacket(packet, PREFIX), 0)];
    return frameDataRun([packet]);
  }
  return [withPrefix(encodeControlPacket(packet, PREFIX), 0)];
}

/**
 * DATA packets of one connection as one gRPC message: a head, then their payloads in order,
 * written where each lies. For several, the receiver sees one DATA packet with all their
 * bytes, and every hop after this one handles a larger packet instead of several.
 */
function frameDataRun(packets: readonly DataPacket[]): Buffer[] {
  let length = 0;
  for (const { data } of packets) length += data.length;
  const buffers = [withPrefix(encodeDataHead(packets[0], PREFIX, length), length)];
  for (const { data } of packets) buffers.push(asBuffer(data));
  return buffers;
}

/**
 * How many packets from `start` on are DATA of the same connection that fit one message of
 * at most RUN_BYTES together (1 if not DATA). Bounded, because a stream that waited for
 * drain hands over everything queued meanwhile, and a peer refuses messages over its limit
 * (4 MiB by default in gRPC).
 */
function dataRunLength(packets: readonly KnownPacket[], start: number): number {
  const first = packets[start];
  if (first.type !== PacketType.DATA || first.error) return 1;
  let bytes = first.data.length;
  let end = start + 1;
  while (end < packets.length) {
    const next = packets[end];
    if (next.type !== PacketType.DATA || next.connectID !== first.connectID || next.error) break;
    bytes += next.data.length;
    if (bytes > RUN_BYTES) break;
    end++;
  }
  return end - start;
}

/** Fills in the gRPC prefix of a frame whose message continues for `following` more bytes. */
function withPrefix(frame: Buffer, following: number): Buffer {
  frame[0] = 0;
  frame.writeUInt32BE(frame.length - PREFIX + following, 1);
  return frame;
}

/**
 * Reads packets from the chunks of a gRPC message stream. A DATA packet longer than the
 * chunk it starts in comes out as several, one per chunk; anything else is decoded whole.
 */
export class GrpcMessageReader {
  private prefix = Buffer.alloc(PREFIX);
  private prefixFilled = 0;
  /** Bytes of the current message still to come (after its prefix). */
  private remaining = 0;
  private length = 0;
  /** Pieces of a message being assembled whole. */
  private pieces: Buffer[] = [];
  /** Set while a DATA payload streams through: the connection it belongs to. */
  private streamingID: bigint | undefined;

  constructor(private readonly maxMessageSize: number) {}

  /** True between messages: a stream may end here. */
  get idle(): boolean {
    return this.prefixFilled === 0 && this.afterMessage;
  }

  /** The last message is done (a prefix may have begun). */
  private get afterMessage(): boolean {
    return this.remaining === 0 && this.streamingID === undefined && this.pieces.length === 0;
  }

  push(chunk: Buffer, emit: (packet: Packet) => void): void {
    let pos = 0;
    while (pos < chunk.length) {
      if (this.afterMessage) {
        const n = Math.min(PREFIX - this.prefixFilled, chunk.length - pos);
        chunk.copy(this.prefix, this.prefixFilled, pos, pos + n);
        this.prefixFilled += n;
        pos += n;
        if (this.prefixFilled < PREFIX) return;
        this.prefixFilled = 0;
        if (this.prefix[0] !== 0) throw new GrpcFramingError('received a compressed gRPC message; this end accepts identity encoding only', GrpcStatus.UNIMPLEMENTED);
        this.length = this.prefix.readUInt32BE(1);
        if (this.length > this.maxMessageSize) throw new GrpcFramingError(`received a gRPC message of ${this.length} bytes, over the limit of ${this.maxMessageSize}`, GrpcStatus.RESOURCE_EXHAUSTED);
        this.remaining = this.length;
        if (this.length === 0) {
          emit(decodePacket(new Uint8Array(0)));
          continue;
        }
        const available = Math.min(this.remaining, chunk.length - pos);
        if (available < this.length) {
          // Spans chunks: stream a DATA payload out as it comes, if the head is all here.
          const head = readDataHead(chunk.subarray(pos, pos + Math.min(available, DATA_HEAD_MAX)), this.length);
          if (head && head.payloadStart <= available) {
            this.streamingID = head.connectID;
            pos += head.payloadStart;
            this.remaining -= head.payloadStart;
          }
        }
      }
      const n = Math.min(this.remaining, chunk.length - pos);
      const piece = chunk.subarray(pos, pos + n);
      pos += n;
      this.remaining -= n;
      if (this.streamingID !== undefined) {
        if (n > 0) emit({ type: PacketType.DATA, connectID: this.streamingID, data: piece });
        if (this.remaining === 0) this.streamingID = undefined;
      } else if (this.remaining === 0 && this.pieces.length === 0) {
        emit(decodePacket(piece));
      } else {
        this.pieces.push(piece);
        if (this.remaining === 0) {
          const whole = Buffer.concat(this.pieces, this.length);
          this.pieces = [];
          emit(decodePacket(whole));
        }
      }
    }
  }
}

/**
 * Resets an HTTP/2 stream (RST_STREAM), on the next turn of the event loop. Node 20's
 * nghttp2 binding spins sending empty DATA frames, with memory growing without bound, when
 * a stream is reset inside the callback that delivered the peer's end of stream together
 * with data the handler answered in the same callback (a client that writes packets and
 * ends at once, one of them malformed). Outside that callback the same reset is harmless.
 */
export function resetStream(h2: http2.Http2Stream, code: number = http2.constants.NGHTTP2_CANCEL): void {
  setImmediate(() => {
    if (!h2.destroyed && !h2.closed) h2.close(code);
  });
}

/** How a packet stream finishes and aborts its HTTP/2 stream: a client and a server differ. */
export interface StreamEnding {
  /** This end has no more packets (a client ends its request; a server sends its status). */
  end(h2: http2.Http2Stream): void;
  /** This end gives up on the stream. */
  abort(h2: http2.Http2Stream, err: Error | null): void;
}

/** An object-mode Duplex of packets over one HTTP/2 stream, with backpressure both ways. */
export class GrpcPacketStream extends Duplex {
  private readonly reader: GrpcMessageReader;

  constructor(private readonly h2: http2.Http2Stream, private readonly ending: StreamEnding, maxMessageSize: number) {
    super({ objectMode: true, highWaterMark: 16 });
    this.reader = new GrpcMessageReader(maxMessageSize);
    h2.on('data', (chunk: Buffer) => {
      let full = false;
      try {
        this.reader.push(chunk, (packet) => {
          if (!this.push(packet)) full = true;
        });
      } catch (err) {
        this.destroy(err as Error);
        return;
      }
      if (full) h2.pause();
    });
    h2.on('end', () => {
      if (this.reader.idle) this.push(null);
      else this.destroy(new GrpcFramingError('the peer ended the stream inside a gRPC message'));
    });
    h2.on('error', (err: Error) => this.destroy(err));
    h2.on('close', () => {
      if (!this.destroyed && !this.readableEnded) this.destroy(new Error(`the HTTP/2 stream closed (code ${h2.rstCode ?? 'none'})`));
    });
  }

  override _read(): void {
    this.h2.resume();
  }

  override _write(packet: KnownPacket, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.writeFrames([packet], callback);
  }

  override _writev(chunks: Array<{ chunk: KnownPacket }>, callback: (err?: Error | null) => void): void {
    this.writeFrames(chunks.map((c) => c.chunk), callback);
  }

  private writeFrames(packets: KnownPacket[], callback: (err?: Error | null) => void): void {
    const h2 = this.h2;
    if (h2.destroyed || h2.writableEnded) {
      callback(new Error('the HTTP/2 stream is closed'));
      return;
    }
    h2.cork();
    for (let i = 0; i < packets.length;) {
      const run = dataRunLength(packets, i);
      const buffers = run > 1 ? frameDataRun(packets.slice(i, i + run) as DataPacket[]) : framePacket(packets[i]);
      for (const buf of buffers) h2.write(buf);
      i += run;
    }
    h2.uncork();
    // Past the queue's size a write has said the stream is full, so 'drain' will come.
    if (h2.writableLength < SEND_QUEUE_BYTES) {
      callback();
      return;
    }
    const done = () => {
      h2.off('drain', done);
      h2.off('close', done);
      callback();
    };
    h2.on('drain', done);
    h2.on('close', done);
  }

  override _final(callback: (err?: Error | null) => void): void {
    if (!this.h2.destroyed && !this.h2.writableEnded) this.ending.end(this.h2);
    callback();
  }

  /** Destroyed after a clean end (autoDestroy) the HTTP/2 stream finishes on its own. */
  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    if (!this.h2.destroyed && (err || !this.writableFinished)) this.ending.abort(this.h2, err);
    callback(err);
  }
}
