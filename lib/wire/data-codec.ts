/**
 * The DATA packet in protobuf wire format, written and read directly:
 *
 *   Packet { type = 1 (varint 4), data = 4 (length-delimited) Data {
 *     connectID = 1 (varint, int64), error = 2 (string), data = 3 (bytes) } }
 *
 * Fields at their proto3 defaults (0, "") are left out and fields go in field-number order,
 * which is what the generated encoder writes, so both produce the same bytes. The decoder
 * returns undefined for anything but that exact shape (another type, unknown or repeated
 * fields, a truncated buffer) and the caller falls back to the generated classes, which
 * handle every case of the protobuf rules.
 */
import { PacketType, type DataPacket } from './packet.js';
import { TAG_TYPE, int64Varint, int64VarintSize, Reader, fieldTag, varintSize, writeInt64Varint, writeVarint } from './wire-format.js';

const EMPTY = new Uint8Array(0);
const TAG_DATA = fieldTag(4, 2);
const TAG_CONNECT_ID = fieldTag(1, 0);
const TAG_ERROR = fieldTag(2, 2);
const TAG_BYTES = fieldTag(3, 2);

/**
 * A DATA packet's encoding up to a payload of `payloadLength` bytes (its own by default),
 * after `reserve` bytes left for the caller (a gRPC frame prefix): the payload's bytes follow
 * it on the wire, so a sender can write them from where they are instead of copying them in.
 */
export function encodeDataHead(packet: DataPacket, reserve = 0, payloadLength = packet.data.length): Buffer {
  return encodeData(packet, reserve, false, payloadLength);
}

/** A DATA packet's whole encoding, after `reserve` bytes left for the caller. */
export function encodeDataPacket(packet: DataPacket, reserve = 0): Buffer {
  return encodeData(packet, reserve, true, packet.data.length);
}

/** The encoding in one buffer, with or without the payload's bytes at its end. */
function encodeData(packet: DataPacket, reserve: number, withPayload: boolean, length: number): Buffer {
  const { connectID, data } = packet;
  const error = packet.error ? Buffer.from(packet.error, 'utf8') : undefined;
  const id = int64Varint(connectID);
  let inner = 0;
  if (connectID !== 0n) inner += 1 + int64VarintSize(id);
  if (error) inner += 1 + varintSize(error.length) + error.length;
  if (length > 0) inner += 1 + varintSize(length) + length;
  const buf = Buffer.allocUnsafe(reserve + 2 + 1 + varintSize(inner) + inner - (withPayload ? 0 : length));
  let pos = reserve;
  buf[pos++] = TAG_TYPE;
  buf[pos++] = PacketType.DATA;
  buf[pos++] = TAG_DATA;
  pos = writeVarint(buf, pos, inner);
  if (connectID !== 0n) {
    buf[pos++] = TAG_CONNECT_ID;
    pos = writeInt64Varint(buf, pos, id);
  }
  if (error) {
    buf[pos++] = TAG_ERROR;
    pos = writeVarint(buf, pos, error.length);
    pos += error.copy(buf, pos);
  }
  if (length > 0) {
    buf[pos++] = TAG_BYTES;
    pos = writeVarint(buf, pos, length);
    if (withPayload) buf.set(data, pos);
  }
  return buf;
}

/** The DATA packet in `bytes`, or undefined when they hold anything else. */
export function decodeDataPacket(bytes: Uint8Array): DataPacket | undefined {
  const outer = new Reader(bytes, 0, bytes.length);
  let type: number | undefined;
  let body: [number, number] | undefined;
  while (outer.pos < outer.end) {
    const tag = bytes[outer.pos++];
    if (tag === TAG_TYPE) {
      type = outer.smallVarint();
      if (type === undefined) return undefined;
    } else if (tag === TAG_DATA && body === undefined) {
      body = outer.delimited();
      if (body === undefined) return undefined;
    } else {
      return undefined;
    }
  }
  if (type !== PacketType.DATA) return undefined;
  const packet: DataPacket = { type: PacketType.DATA, connectID: 0n, data: EMPTY };
  if (body === undefined) return packet;
  const inner = new Reader(bytes, body[0], body[1]);
  let seen = 0;
  while (inner.pos < inner.end) {
    const tag = bytes[inner.pos++];
    const bit = tag === TAG_CONNECT_ID ? 1 : tag === TAG_ERROR ? 2 : tag === TAG_BYTES ? 4 : 0;
    if (bit === 0 || seen & bit) return undefined;
    seen |= bit;
    if (tag === TAG_CONNECT_ID) {
      const id = inner.int64();
      if (id === undefined) return undefined;
      packet.connectID = id;
    } else if (tag === TAG_BYTES) {
      const range = inner.delimited();
      if (range === undefined) return undefined;
      packet.data = bytes.subarray(range[0], range[1]);
    } else {
      const error = inner.string();
      if (error === undefined) return undefined;
      if (error) packet.error = error;
    }
  }
  return packet;
}

/** Where a DATA packet's payload starts in its encoding, read from the encoding's first bytes. */
export interface DataHead {
  connectID: bigint;
  /** Offset of the payload; it runs to the end of the encoding. */
  payloadStart: number;
}

/**
 * Reads the head of a DATA packet whose encoding is `length` bytes long from `bytes`, the
 * first of them (a receiver may have only these yet): the connectID and where the payload
 * starts. Undefined unless the encoding has the shape encodeDataHead writes without an
 * error string and with the payload running to its end; the caller then decodes the whole
 * encoding instead.
 */
export function readDataHead(bytes: Uint8Array, length: number): DataHead | undefined {
  const r = new Reader(bytes, 0, Math.min(bytes.length, length));
  if (bytes[r.pos++] !== TAG_TYPE || r.smallVarint() !== PacketType.DATA || bytes[r.pos++] !== TAG_DATA) return undefined;
  const inner = r.smallVarint();
  if (inner === undefined || r.pos + inner !== length) return undefined;
  let connectID = 0n;
  if (bytes[r.pos] === TAG_CONNECT_ID) {
    r.pos++;
    const id = r.int64();
    if (id === undefined) return undefined;
    connectID = id;
  }
  if (bytes[r.pos++] !== TAG_BYTES) return undefined;
  const payloadLength = r.smallVarint();
  if (payloadLength === undefined || r.pos + payloadLength !== length || r.pos > r.end) return undefined;
  return { connectID, payloadStart: r.pos };
}
