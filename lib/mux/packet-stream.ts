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
  return [joinHalves(bToA, aToB), joinHalves(aToB, bToA)];
}

function joinHalves(readFrom: PassThrough, writeTo: PassThrough): PacketStream {
  const duplex: Duplex = new Duplex({
    objectMode: true,
    highWaterMark: PAIR_HIGH_WATER_MARK,
    read() {
      readFrom.resume();
    },
    write(packet: Packet, _encoding, callback) {
      if (writeTo.write(packet)) callback();
      else writeTo.once('drain', () => callback());
    },
    final(callback) {
      writeTo.end();
      callback();
    },
    destroy(err, callback) {
      writeTo.destroy();
      readFrom.destroy();
      callback(err);
    },
  });
  readFrom.on('data', (packet: Packet) => {
    if (!duplex.push(packet)) readFrom.pause();
  });
  readFrom.on('end', () => duplex.push(null));
  readFrom.on('close', () => {
    if (!readFrom.readableEnded) duplex.destroy();
  });
  return duplex;
}
