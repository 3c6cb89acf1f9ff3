/**
 * The few protobuf wire-format pieces the direct codecs (data-codec.ts, control-codec.ts)
 * need: varints, int64 varints and length-delimited fields.
 */
import { isUtf8 } from 'node:buffer';

const MAX_SAFE_ID = BigInt(Number.MAX_SAFE_INTEGER);

/** A field's tag: its number and wire type (0 varint, 2 length-delimited). */
export const fieldTag = (field: number, wireType: 0 | 2): number => field * 8 + wireType;

/** Packet.type, field 1 of every packet. */
export const TAG_TYPE = fieldTag(1, 0);

export function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

export function writeVarint(buf: Buffer, pos: number, n: number): number {
  while (n >= 0x80) {
    buf[pos++] = (n % 128) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[pos++] = n;
  return pos;
}

/**
 * An int64 ready to write as a varint: a number when it is small and not negative (nearly
 * always), otherwise its bytes, ten for a negative value, as protobuf has it.
 */
export type Int64Varint = number | number[];

export function int64Varint(value: bigint): Int64Varint {
  if (value >= 0n && value <= MAX_SAFE_ID) return Number(value);
  let u = BigInt.asUintN(64, value);
  const out: number[] = [];
  while (u >= 0x80n) {
    out.push(Number(u & 0x7fn) | 0x80);
    u >>= 7n;
  }
  out.push(Number(u));
  return out;
}

export function int64VarintSize(v: Int64Varint): number {
  return typeof v === 'number' ? varintSize(v) : v.length;
}

export function writeInt64Varint(buf: Buffer, pos: number, v: Int64Varint): number {
  if (typeof v === 'number') return writeVarint(buf, pos, v);
  for (const b of v) buf[pos++] = b;
  return pos;
}

/** Reads varints and length-delimited fields from `bytes` between `start` and `end`. */
export class Reader {
  pos: number;
  constructor(readonly bytes: Uint8Array, start: number, readonly end: number) {
    this.pos = start;
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  /** A varint of at most 7 bytes (< 2^49) as a number, or undefined. */
  smallVarint(): number | undefined {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 7 && this.pos < this.end; i++) {
      const b = this.bytes[this.pos++];
      result += (b & 0x7f) * scale;
      if (b < 0x80) return result;
      scale *= 128;
    }
    return undefined;
  }

  /** Any varint of up to ten bytes, as an int64. */
  int64(): bigint | undefined {
    const start = this.pos;
    const small = this.smallVarint();
    if (small !== undefined) return BigInt(small);
    this.pos = start;
    let result = 0n;
    let shift = 0n;
    for (let i = 0; i < 10 && this.pos < this.end; i++) {
      const b = this.bytes[this.pos++];
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return BigInt.asIntN(64, result);
      shift += 7n;
    }
    return undefined;
  }

  /** The bounds of a length-delimited field's content, or undefined. */
  delimited(): [number, number] | undefined {
    const length = this.smallVarint();
    if (length === undefined || this.pos + length > this.end) return undefined;
    const start = this.pos;
    this.pos += length;
    return [start, this.pos];
  }

  /**
   * A length-delimited field's content as UTF-8 text, or undefined. Invalid UTF-8 is
   * undefined too: Node would replace each bad sequence with U+FFFD where the generated
   * classes drop bytes, so such text is left to them and both paths read the same string.
   */
  string(): string | undefined {
    const range = this.delimited();
    if (range === undefined) return undefined;
    if (range[1] === range[0]) return '';
    const text = Buffer.from(this.bytes.buffer, this.bytes.byteOffset + range[0], range[1] - range[0]);
    return isUtf8(text) ? text.toString('utf8') : undefined;
  }
}

/**
 * Why the bytes between `start` and `end` are not a well-formed protobuf message, or
 * undefined when they are: every tag and varint complete, every fixed or length-delimited
 * field inside its message, every group closed. Length-delimited fields for which
 * `isMessage` says so are messages and checked the same way (their own fields are
 * scalars, strings and bytes). The generated classes read a length that runs past the end
 * byte by byte to its end, so a few bytes that claim a large field would cost seconds.
 */
export function wireProblem(bytes: Uint8Array, start: number, end: number, isMessage?: (field: number) => boolean): string | undefined {
  const r = new Reader(bytes, start, end);
  const groups: number[] = [];
  while (!r.done) {
    const at = r.pos - start;
    const tag = r.smallVarint();
    if (tag === undefined || tag >= 2 ** 32) return `a truncated or overlong tag at byte ${at}`;
    const field = Math.floor(tag / 8);
    const wireType = tag % 8;
    if (field === 0) return `field number 0 at byte ${at}`;
    switch (wireType) {
      case 0:
        if (r.int64() === undefined) return `field ${field} at byte ${at} has a truncated or overlong varint`;
        break;
      case 1:
      case 5:
        r.pos += wireType === 1 ? 8 : 4;
        if (r.pos > end) return `field ${field} at byte ${at} runs past the end of its message`;
        break;
      case 2: {
        const range = r.delimited();
        if (range === undefined) return `field ${field} at byte ${at} runs past the end of its message`;
        const inner = groups.length === 0 && isMessage?.(field) ? wireProblem(bytes, range[0], range[1]) : undefined;
        if (inner !== undefined) return `in field ${field} at byte ${at}: ${inner}`;
        break;
      }
      case 3:
        groups.push(field);
        break;
      case 4:
        if (groups.pop() !== field) return `an unmatched end of group ${field} at byte ${at}`;
        break;
      default:
        return `field ${field} at byte ${at} has wire type ${wireType}, which does not exist`;
    }
  }
  return groups.length > 0 ? `group ${groups[groups.length - 1]} is not closed` : undefined;
}
