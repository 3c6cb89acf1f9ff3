/**
 * Reads Kubernetes protobuf request bodies ("k8s\0" + runtime.Unknown{typeMeta, raw}) into the
 * JSON the rest of the double works on, as the API server's protobuf serializer would decode
 * them: field names from the JSON tags, []byte as base64, metav1.Time as RFC 3339, IntOrString
 * as a number or a string. kubectl sends its typed-client writes this way; answers stay JSON
 * (kubectl accepts application/json as its fallback).
 */
import type { JsonObject } from './json.js';
import { badRequest } from './status.js';
import { formatMicroTime, formatTime } from './time.js';
import { MESSAGE_OF_KIND, MESSAGES, STRING_LIST_MESSAGES, type FieldSpec } from './protobuf-schema.js';

export const PROTOBUF_CONTENT_TYPE = 'application/vnd.kubernetes.protobuf';
const MAGIC = Buffer.from('k8s\u0000', 'latin1');
const WIRE_VARINT = 0;
const WIRE_64BIT = 1;
const WIRE_LENGTH = 2;
const WIRE_32BIT = 5;
/**
 * Go writes every non-pointer field to protobuf, zero or not, while its JSON leaves zero
 * values out (omitempty); so zeros are dropped, except in these fields, which are pointers in
 * Go (a 0 or false there was set on purpose) or required in JSON.
 */
const ZERO_MEANINGFUL = new Set([
  'immutable', 'expirationSeconds', 'leaseDurationSeconds', 'leaseTransitions', 'deletionGracePeriodSeconds', 'gracePeriodSeconds',
  'orphanDependents', 'automountServiceAccountToken', 'allocateLoadBalancerNodePorts', 'controller', 'blockOwnerDeletion', 'port',
]);

type Value = unknown;

class Reader {
  private offset = 0;

  constructor(private readonly buf: Buffer) {}

  get done(): boolean {
    return this.offset >= this.buf.length;
  }

  varint(): bigint {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (this.offset >= this.buf.length) throw malformed();
      const byte = this.buf[this.offset++];
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7n;
      if (shift > 63n) throw malformed();
    }
  }

  bytes(): Buffer {
    const length = Number(this.varint());
    if (this.offset + length > this.buf.length) throw malformed();
    const slice = this.buf.subarray(this.offset, this.offset + length);
    this.offset += length;
    return slice;
  }

  skip(wireType: number): void {
    if (wireType === WIRE_VARINT) this.varint();
    else if (wireType === WIRE_LENGTH) this.bytes();
    else if (wireType === WIRE_64BIT) this.offset += 8;
    else if (wireType === WIRE_32BIT) this.offset += 4;
    else throw malformed();
  }

  fixed(size: 4 | 8): Buffer {
    if (this.offset + size > this.buf.length) throw malformed();
    const slice = this.buf.subarray(this.offset, this.offset + size);
    this.offset += size;
    return slice;
  }
}

function malformed(): Error {
  return badRequest('the object provided is unrecognized: malformed protobuf body');
}

/** Decodes a protobuf request body into the JSON object it encodes. */
export function decodeKubernetesProtobuf(body: Buffer): JsonObject {
  if (body.length < MAGIC.length || !body.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw badRequest('provided object is not a valid Kubernetes protobuf message: missing the "k8s\\x00" prefix');
  }
  const unknown = decodeMessage(body.subarray(MAGIC.length), 'runtime.Unknown') as JsonObject;
  const typeMeta = (unknown.typeMeta ?? {}) as JsonObject;
  const apiVersion = typeof typeMeta.apiVersion === 'string' ? typeMeta.apiVersion : '';
  const kind = typeof typeMeta.kind === 'string' ? typeMeta.kind : '';
  const message = MESSAGE_OF_KIND[`${apiVersion}/${kind}`];
  if (!message) throw badRequest(`no kind "${kind}" is registered for version "${apiVersion}" in the protobuf serializer of this double`);
  const raw = typeof unknown.raw === 'string' ? Buffer.from(unknown.raw, 'base64') : Buffer.alloc(0);
  return { apiVersion, kind, ...(decodeMessage(raw, message) as JsonObject) };
}

function decodeMessage(buf: Buffer, name: string): Value {
  const fields = MESSAGES[name];
  if (!fields) throw malformed();
  const reader = new Reader(buf);
  const object: JsonObject = {};
  while (!reader.done) {
    const tag = reader.varint();
    const number = Number(tag >> 3n);
    const wireType = Number(tag & 7n);
    const spec = fields[number];
    if (!spec || spec[1] === 'skip') {
      reader.skip(wireType);
      continue;
    }
    readField(reader, wireType, spec, object);
  }
  if (STRING_LIST_MESSAGES.has(name)) return Array.isArray(object.items) ? object.items : [];
  for (const [key, value] of Object.entries(object)) if (isZero(value) && !ZERO_MEANINGFUL.has(key)) delete object[key];
  return object;
}

function isZero(value: unknown): boolean {
  if (value === '' || value === 0 || value === false || value === null) return true;
  if (Array.isArray(value)) return value.length === 0;
  return false;
}

function readField(reader: Reader, wireType: number, spec: FieldSpec, object: JsonObject): void {
  const [json, type] = spec;
  if (type === 'map') {
    const valueType = spec[2] ?? 'string';
    const entry = new Reader(reader.bytes());
    let key = '';
    let value: Value = '';
    while (!entry.done) {
      const tag = entry.varint();
      const number = Number(tag >> 3n);
      if (number === 1) key = entry.bytes().toString('utf8');
      else if (number === 2) value = readValue(entry, Number(tag & 7n), valueType);
      else entry.skip(Number(tag & 7n));
    }
    const map = (object[json] ?? {}) as JsonObject;
    map[key] = value;
    object[json] = map;
    return;
  }
  if (spec[2] === 'repeated') {
    const list = (object[json] ?? []) as Value[];
    if (wireType === WIRE_LENGTH && isPackable(type)) {
      const packed = new Reader(reader.bytes());
      while (!packed.done) list.push(readValue(packed, WIRE_VARINT, type));
    } else {
      list.push(readValue(reader, wireType, type));
    }
    object[json] = list;
    return;
  }
  object[json] = readValue(reader, wireType, type);
}

function isPackable(type: string): boolean {
  return type === 'int32' || type === 'int64' || type === 'bool' || type === 'uint32' || type === 'uint64';
}

function readValue(reader: Reader, wireType: number, type: string): Value {
  switch (type) {
    case 'string':
      return reader.bytes().toString('utf8');
    case 'bytes':
      return reader.bytes().toString('base64');
    case 'int32':
    case 'int64':
      return Number(BigInt.asIntN(64, reader.varint()));
    case 'uint32':
    case 'uint64':
      return Number(reader.varint());
    case 'bool':
      return reader.varint() !== 0n;
    case 'double':
      return reader.fixed(8).readDoubleLE(0);
    case 'float':
      return reader.fixed(4).readFloatLE(0);
    case 'meta.Time':
    case 'meta.MicroTime':
      return time(reader.bytes(), type === 'meta.MicroTime');
    case 'intstr.IntOrString':
      return intOrString(reader.bytes());
    default:
      if (wireType !== WIRE_LENGTH) throw malformed();
      return decodeMessage(reader.bytes(), type);
  }
}

/** A metav1.Time; the zero time (which Go's JSON writes as null) is null. */
function time(buf: Buffer, micro: boolean): string | null {
  const reader = new Reader(buf);
  let seconds = 0n;
  let nanos = 0n;
  while (!reader.done) {
    const tag = reader.varint();
    if (tag >> 3n === 1n) seconds = BigInt.asIntN(64, reader.varint());
    else if (tag >> 3n === 2n) nanos = BigInt.asIntN(64, reader.varint());
    else reader.skip(Number(tag & 7n));
  }
  if (seconds === 0n && nanos === 0n) return null;
  const date = new Date(Number(seconds) * 1000 + Math.floor(Number(nanos) / 1e6));
  return micro ? formatMicroTime(date) : formatTime(date);
}

/** intstr.IntOrString: type 0 is an int, 1 a string. */
function intOrString(buf: Buffer): number | string {
  const reader = new Reader(buf);
  let kind = 0;
  let intVal = 0;
  let strVal = '';
  while (!reader.done) {
    const tag = reader.varint();
    const number = Number(tag >> 3n);
    if (number === 1) kind = Number(reader.varint());
    else if (number === 2) intVal = Number(BigInt.asIntN(64, reader.varint()));
    else if (number === 3) strVal = reader.bytes().toString('utf8');
    else reader.skip(Number(tag & 7n));
  }
  return kind === 1 ? strVal : intVal;
}
