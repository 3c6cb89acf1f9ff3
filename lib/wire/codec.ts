/**
 * Encodes and decodes packets as proto/client.proto defines them; the message classes
 * generated from it (google-protobuf) are the reference and the fallback. Every sender sets
 * both `type` and the matching payload; a receiver switches on `type` and reads a missing
 * payload as empty, as the reference does. Unknown fields are skipped and unknown types come
 * back as UnknownPacket.
 *
 * All packets take a direct path that writes the same bytes without building message objects:
 * DATA, nearly all the traffic, through data-codec.ts, which also reads the payload without
 * copying it, and the rest through control-codec.ts. Anything those do not recognise is
 * decoded by the generated classes.
 */
import * as pb from './gen/client.js';
import { PacketType, type KnownPacket, type Packet } from './packet.js';
import { decodeDataPacket, encodeDataPacket } from './data-codec.js';
import { decodeControlPacket, encodeControlPacket } from './control-codec.js';
import { wireProblem } from './wire-format.js';

const EMPTY = new Uint8Array(0);
/** Packet's fields that hold a payload message (proto/client.proto). */
const PAYLOAD_FIELDS = new Set([2, 3, 4, 5, 6, 7, 8, 64]);
const isPayload = (field: number) => PAYLOAD_FIELDS.has(field);

/** A protocol violation in an encoded packet (truncated varint, bad wire type, ...). */
export class PacketDecodeError extends Error {}

export function encodePacket(packet: KnownPacket): Buffer {
  return packet.type === PacketType.DATA ? encodeDataPacket(packet) : encodeControlPacket(packet);
}

export function decodePacket(bytes: Uint8Array): Packet {
  return decodeDataPacket(bytes) ?? decodeControlPacket(bytes) ?? decodeWithMessages(bytes);
}

/** The generated classes only; the reference for the direct codecs in tests. */
export function encodeWithMessages(packet: KnownPacket): Uint8Array {
  return toMessage(packet).serializeBinary();
}

export function decodeWithMessages(bytes: Uint8Array): Packet {
  // Checked first: the generated classes take time in proportion to a length a field
  // claims, not to the bytes that came.
  const problem = wireProblem(bytes, 0, bytes.length, isPayload);
  if (problem !== undefined) throw new PacketDecodeError(`malformed packet of ${bytes.length} bytes: ${problem}`);
  let message: pb.Packet;
  try {
    message = pb.Packet.deserializeBinary(bytes);
  } catch (err) {
    throw new PacketDecodeError(`malformed packet of ${bytes.length} bytes: ${(err as Error).message}`);
  }
  return fromMessage(message);
}

function toMessage(p: KnownPacket): pb.Packet {
  switch (p.type) {
    case PacketType.DIAL_REQ:
      return new pb.Packet({ type: p.type, dialRequest: new pb.DialRequest({ protocol: p.protocol, address: p.address, random: p.random.toString() }) });
    case PacketType.DIAL_RSP:
      return new pb.Packet({ type: p.type, dialResponse: new pb.DialResponse({ error: p.error, connectID: p.connectID.toString(), random: p.random.toString() }) });
    case PacketType.CLOSE_REQ:
      return new pb.Packet({ type: p.type, closeRequest: new pb.CloseRequest({ connectID: p.connectID.toString() }) });
    case PacketType.CLOSE_RSP:
      return new pb.Packet({ type: p.type, closeResponse: new pb.CloseResponse({ error: p.error, connectID: p.connectID.toString() }) });
    case PacketType.DATA:
      return new pb.Packet({ type: p.type, data: new pb.Data({ connectID: p.connectID.toString(), data: p.data, error: p.error }) });
    case PacketType.DIAL_CLS:
      return new pb.Packet({ type: p.type, closeDial: new pb.CloseDial({ random: p.random.toString() }) });
    case PacketType.DRAIN:
      return new pb.Packet({ type: PacketType.DRAIN, drain: new pb.Drain() });
    case PacketType.WINDOW_UPDATE:
      return new pb.Packet({ type: p.type, windowUpdate: new pb.WindowUpdate({ connectID: p.connectID.toString(), bytes: p.bytes.toString() }) });
  }
}

function fromMessage(m: pb.Packet): Packet {
  const type = m.type as number;
  switch (type) {
    case PacketType.DIAL_REQ: {
      const p = m.dialRequest;
      return { type, protocol: p?.protocol ?? '', address: p?.address ?? '', random: BigInt(p?.random ?? 0) };
    }
    case PacketType.DIAL_RSP: {
      const p = m.dialResponse;
      return { type, error: p?.error ?? '', connectID: BigInt(p?.connectID ?? 0), random: BigInt(p?.random ?? 0) };
    }
    case PacketType.CLOSE_REQ:
      return { type, connectID: BigInt(m.closeRequest?.connectID ?? 0) };
    case PacketType.CLOSE_RSP: {
      const p = m.closeResponse;
      return { type, error: p?.error ?? '', connectID: BigInt(p?.connectID ?? 0) };
    }
    case PacketType.DATA: {
      const p = m.data;
      const packet: Packet = { type, connectID: BigInt(p?.connectID ?? 0), data: p?.data ?? EMPTY };
      if (p?.error) packet.error = p.error;
      return packet;
    }
    case PacketType.DIAL_CLS:
      return { type, random: BigInt(m.closeDial?.random ?? 0) };
    case PacketType.DRAIN:
      return { type };
    case PacketType.WINDOW_UPDATE: {
      const p = m.windowUpdate;
      return { type, connectID: BigInt(p?.connectID ?? 0), bytes: BigInt(p?.bytes ?? 0) };
    }
    default:
      return { type, unknown: true };
  }
}
