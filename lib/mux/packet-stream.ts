/**
 * What a multiplexer runs over: an object-mode Duplex that reads and writes packets.
 * A grpc-js bidi call is one as it is; tests use an in-memory pair.
 */
import { Duplex, PassThrough } from 'node:stream';
import type { Packet } from '../wire/packet.js';

export type PacketStream = Duplex;

/** Object-mode high-water mark of an in-memory pair, in packets (grpc-js uses 16 as well). */
const PAIR_HIGH_WATER_MARK = 16;

/**
 * Two connected in-memory packet streams: what one writes the other reads, with stream
 * backpressure in both directions. Packets are passed by reference, not encoded.
 */
export function packetStreamPair(): [PacketStream, PacketStream] {
  const aToB = new PassThrough({ objectMode: true, highWaterMark: PAIR_HIGH_WATER_MARK });
  const bToA = new PassThrough({ objectMode: true, highWaterMark: PAIR_HIGH_WATER_MARK });
  return [joinPacketStreams(bToA, aToB), joinPacketStreams(aToB, bToA)];
}

/**
 * One packet stream made of two: packets are read from `input` and written to `output`,
 * with backpressure both ways. The agent and server use it to carry each direction of an
 * agent's traffic on its own connection; when either side ends or fails, both are closed.
 */
export function joinPacketStreams(input: Duplex | PassThrough, output: Duplex | PassThrough): PacketStream {
  const joined: Duplex = new Duplex({
    objectMode: true,
    highWaterMark: PAIR_HIGH_WATER_MARK,
    read() {
      input.resume();
    },
    write(packet: Packet, _encoding, callback) {
      if (output.write(packet)) callback();
      else output.once('drain', () => callback());
    },
    // A batch stays a batch: the output may frame it better than packet by packet.
    writev(chunks: Array<{ chunk: Packet }>, callback) {
      let ok = true;
      output.cork();
      for (const { chunk } of chunks) ok = output.write(chunk);
      output.uncork();
      if (ok) callback();
      else output.once('drain', () => callback());
    },
    final(callback) {
      output.end();
      callback();
    },
    destroy(err, callback) {
      output.destroy();
      input.destroy();
      callback(err);
    },
  });
  input.on('data', (packet: Packet) => {
    if (!joined.push(packet)) input.pause();
  });
  input.on('end', () => joined.push(null));
  for (const side of [input, output]) {
    side.on('error', (err: Error) => joined.destroy(err));
    side.on('close', () => {
      if (!joined.destroyed && !(side === input && input.readableEnded)) joined.destroy();
    });
  }
  return joined;
}
