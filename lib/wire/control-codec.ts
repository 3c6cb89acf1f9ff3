/**
 * Every packet but DATA in protobuf wire format, written and read directly:
 *
 *   Packet { type = 1 (varint), <payload> = N (length-delimited) { fields } }
 *
 * with the payload field and its fields per type as in proto/client.proto (SHAPES below).
 * These packets are few, but a dial and its close take four of them, each encoded once and
 * decoded once, and the generated classes build several objects and run a long path of
 * library code per packet: timed inside a server and an agent under churn, 10 to 17 µs per
 * packet (median) through them, 2 to 5 µs here. Every tag here fits in one byte.
 *
 * As in data-codec.ts: fields at their proto3 defaults (type DIAL_REQ = 0, "", 0) are left
 * out and fields go in field-number order, as the generated encoder writes them, so both
 * produce the same bytes; the decoder returns undefined for anything but that shape (an
 * unknown type or field, a repeated field, a payload of another type, a truncated buffer)
 * and the caller falls back to the generated classes.
 */
import { PacketType, type DataPacket, type KnownPacket } from './packet.js';
import { TAG_TYPE, fieldTag, int64Varint, int64VarintSize, Reader, varintSize, writeInt64Varint, writeVarint, type Int64Varint } from './wire-format.js';

export type ControlPacket = Exclude<KnownPacket, DataPacket>;

interface Field {
  key: string;
  kind: 'string' | 'int64';
  tag: number;
}

interface Shape {
  payloadTag: number;
  fields: readonly Field[];
}

const stringField = (key: string, field: number): Field => ({ key, kind: 'string', tag: fieldTag(field, 2) });
const int64Field = (key: string, field: number): Field => ({ key, kind: 'int64', tag: fieldTag(field, 0) });
const shape = (payloadField: number, ...fields: Field[]): Shape => ({ payloadTag: fieldTag(payloadField, 2), fields });

const SHAPES = new Map<number, Shape>([
  [PacketType.DIAL_REQ, shape(2, stringField('protocol', 1), stringField('address', 2), int64Field('random', 3))],
  [PacketType.DIAL_RSP, shape(3, stringField('error', 1), int64Field('connectID', 2), int64Field('random', 3))],
  [PacketType.CLOSE_REQ, shape(5, int64Field('connectID', 1))],
  [PacketType.CLOSE_RSP, shape(6, stringField('error', 1), int64Field('connectID', 2))],
  [PacketType.DIAL_CLS, shape(7, int64Field('random', 1))],
  [PacketType.DRAIN, shape(8)],
  [PacketType.WINDOW_UPDATE, shape(64, int64Field('connectID', 1), int64Field('bytes', 2))],
]);
const PAYLOAD_TAGS = new Set([...SHAPES.values()].map((s) => s.payloadTag));

type Values = Record<string, string | bigint>;

/** The encoding of a packet other than DATA, after `reserve` bytes left for the caller (a gRPC frame prefix). */
export function encodeControlPacket(packet: ControlPacket, reserve = 0): Buffer {
  const { payloadTag, fields } = SHAPES.get(packet.type)!;
  const values = packet as unknown as Values;
  // Each field's value as written (a string's UTF-8 length, an int64's varint), or undefined at its default.
  const written: Array<number | Int64Varint | undefined> = [];
  let inner = 0;
  for (const field of fields) {
    const value = values[field.key];
    if (field.kind === 'string') {
      const length = value ? Buffer.byteLength(value as string, 'utf8') : 0;
      written.push(length > 0 ? length : undefined);
      if (length > 0) inner += 1 + varintSize(length) + length;
    } else {
      const varint = value ? int64Varint(value as bigint) : undefined;
      written.push(varint);
      if (varint !== undefined) inner += 1 + int64VarintSize(varint);
    }
  }
  const typeSize = packet.type === PacketType.DIAL_REQ ? 0 : 1 + varintSize(packet.type);
  const buf = Buffer.allocUnsafe(reserve + typeSize + varintSize(payloadTag) + varintSize(inner) + inner);
  let pos = reserve;
  if (typeSize > 0) {
    buf[pos++] = TAG_TYPE;
    pos = writeVarint(buf, pos, packet.type);
  }
  pos = writeVarint(buf, pos, payloadTag);
  pos = writeVarint(buf, pos, inner);
  fields.forEach((field, i) => {
    const value = written[i];
    if (value === undefined) return;
    buf[pos++] = field.tag;
    if (field.kind === 'string') {
      pos = writeVarint(buf, pos, value as number);
      pos += buf.write(values[field.key] as string, pos, 'utf8');
    } else {
      pos = writeInt64Varint(buf, pos, value);
    }
  });
  return buf;
}

/** The packet other than DATA in `bytes`, or undefined when they hold anything else. */
export function decodeControlPacket(bytes: Uint8Array): ControlPacket | undefined {
  const outer = new Reader(bytes, 0, bytes.length);
  let type: number = PacketType.DIAL_REQ;
  let payloadTag: number | undefined;
  let body: [number, number] | undefined;
  while (!outer.done) {
    const tag = outer.smallVarint();
    if (tag === TAG_TYPE) {
      const value = outer.smallVarint();
      if (value === undefined) return undefined;
      type = value;
    } else if (tag !== undefined && PAYLOAD_TAGS.has(tag) && body === undefined) {
      payloadTag = tag;
      body = outer.delimited();
      if (body === undefined) return undefined;
    } else {
      return undefined;
    }
  }
  const shape = SHAPES.get(type);
  if (!shape || (payloadTag !== undefined && payloadTag !== shape.payloadTag)) return undefined;
  const packet: Record<string, string | bigint | number> = { type };
  for (const field of shape.fields) packet[field.key] = field.kind === 'string' ? '' : 0n;
  if (body !== undefined) {
    const inner = new Reader(bytes, body[0], body[1]);
    let seen = 0;
    while (!inner.done) {
      const tag = inner.smallVarint();
      const index = shape.fields.findIndex((f) => f.tag === tag);
      if (index < 0 || seen & (1 << index)) return undefined;
      seen |= 1 << index;
      const field = shape.fields[index];
      const value = field.kind === 'string' ? inner.string() : inner.int64();
      if (value === undefined) return undefined;
      packet[field.key] = value;
    }
  }
  return packet as unknown as ControlPacket;
}
