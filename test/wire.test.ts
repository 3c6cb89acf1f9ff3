import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import {
  decodePacket, encodePacket, PacketType, isUnknown, dataPacket, windowUpdate, type Packet, type KnownPacket,
} from '../lib/wire/index.js';
import { decodeWithMessages, encodeWithMessages } from '../lib/wire/codec.js';
import { decodeDataPacket } from '../lib/wire/data-codec.js';
import { FIXTURES } from './helpers/paths.js';

interface Vector {
  name: string;
  hex: string;
  packet: { type: keyof typeof PacketType } & Record<string, Record<string, string> | string>;
}

const vectors = (JSON.parse(readFileSync(join(FIXTURES, 'konnectivity-vectors.json'), 'utf8')) as { vectors: Vector[] }).vectors;

/** Builds the expected packet object from a vector's JSON form (ids as decimal strings). */
function expected(v: Vector): Packet {
  const type = PacketType[v.packet.type];
  const body = (Object.entries(v.packet).find(([k]) => k !== 'type')?.[1] ?? {}) as Record<string, string>;
  const id = (key: string) => BigInt(body[key] ?? '0');
  switch (type) {
    case PacketType.DIAL_REQ: return { type, protocol: body.protocol ?? '', address: body.address ?? '', random: id('random') };
    case PacketType.DIAL_RSP: return { type, error: body.error ?? '', connectID: id('connectID'), random: id('random') };
    case PacketType.CLOSE_REQ: return { type, connectID: id('connectID') };
    case PacketType.CLOSE_RSP: return { type, error: body.error ?? '', connectID: id('connectID') };
    case PacketType.DATA: return { type, connectID: id('connectID'), data: Buffer.from(body.dataUtf8 ?? '', 'utf8') };
    case PacketType.DIAL_CLS: return { type, random: id('random') };
    case PacketType.DRAIN: return { type };
    default: throw new Error(`vector ${v.name} has an unexpected type`);
  }
}

function normalise(p: Packet): unknown {
  return 'data' in p ? { ...p, data: Buffer.from(p.data).toString('hex') } : p;
}

test('the vectors cover every packet type of the reference protocol', (t) => {
  const types = new Set(vectors.map((v) => v.packet.type));
  t.deepEqual([...types].sort(), ['CLOSE_REQ', 'CLOSE_RSP', 'DATA', 'DIAL_CLS', 'DIAL_REQ', 'DIAL_RSP', 'DRAIN']);
});

for (const v of vectors) {
  test(`vector ${v.name}: decodes to the listed packet and encodes back to the same bytes`, (t) => {
    const bytes = Buffer.from(v.hex, 'hex');
    const decoded = decodePacket(bytes);
    t.deepEqual(normalise(decoded), normalise(expected(v)));
    t.is(Buffer.from(encodePacket(decoded as KnownPacket)).toString('hex'), v.hex);
  });
}

test('dial ids above 2^53 survive a round trip exactly', (t) => {
  const random = 2n ** 63n - 12345n;
  const decoded = decodePacket(encodePacket({ type: PacketType.DIAL_REQ, protocol: 'tcp', address: 'c1:443', random }));
  t.is((decoded as { random: bigint }).random, random);
});

test('an absent type field decodes as DIAL_REQ', (t) => {
  // field 2 (dialRequest) holding address "a:1", no field 1 at all
  const decoded = decodePacket(Buffer.from('12051203613a31', 'hex'));
  t.is(decoded.type, PacketType.DIAL_REQ);
  t.is((decoded as { address: string }).address, 'a:1');
});

test('an unknown packet type decodes as unknown instead of failing', (t) => {
  const decoded = decodePacket(Buffer.from('0863', 'hex')); // type = 99
  t.true(isUnknown(decoded));
  t.is(decoded.type, 99);
});

test('unknown fields are skipped', (t) => {
  // DATA{connectID: 7} followed by an unknown field 15 (varint 1)
  const decoded = decodePacket(Buffer.from('080422020807' + '7801', 'hex'));
  t.deepEqual(normalise(decoded), normalise(dataPacket(7n, new Uint8Array(0))));
});

test('a type without its payload reads the payload as empty', (t) => {
  const decoded = decodePacket(Buffer.from('0804', 'hex'));
  t.deepEqual(normalise(decoded), normalise(dataPacket(0n, new Uint8Array(0))));
});

test('malformed bytes raise a decode error, not a crash', (t) => {
  t.throws(() => decodePacket(Buffer.from('08ffffffffffffffffffff', 'hex')));
});

test('the WINDOW_UPDATE extension round-trips', (t) => {
  const decoded = decodePacket(encodePacket(windowUpdate(3n, 65536)));
  t.deepEqual(decoded, { type: PacketType.WINDOW_UPDATE, connectID: 3n, bytes: 65536n });
});

test('DATA packets take the direct path and write the same bytes as the generated classes', (t) => {
  const ids = [0n, 1n, 127n, 128n, 300n, 2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n - 1n, -1n, -(2n ** 63n)];
  const payloads = [new Uint8Array(0), Buffer.from('x'), randomBytes(127), randomBytes(128), randomBytes(70_000)];
  for (const connectID of ids) {
    for (const data of payloads) {
      for (const error of [undefined, '', 'dial tcp: connection refused ✗']) {
        const packet: KnownPacket = { ...dataPacket(connectID, data), ...(error === undefined ? {} : { error }) };
        const fast = Buffer.from(encodePacket(packet));
        const reference = Buffer.from(encodeWithMessages(packet));
        t.true(fast.equals(reference), `encoding of id ${connectID}, ${data.length} bytes, error ${JSON.stringify(error)}`);
        t.truthy(decodeDataPacket(reference), 'the direct path reads what the generated classes write');
        t.deepEqual(normalise(decodePacket(reference)), normalise(decodeWithMessages(reference)), `decoding of id ${connectID}`);
      }
    }
  }
});

test('DATA shapes the direct path does not take still decode by the protobuf rules', (t) => {
  const cases = [
    '0804', // no payload
    '220208070804', // payload before type
    '080422020807' + '7801', // unknown trailing field
    '08042202080722020809', // payload twice: merged, last connectID wins
    '0804220408070807', // connectID twice: last wins
    '08042203120141', // error only
  ];
  for (const hex of cases) {
    const bytes = Buffer.from(hex, 'hex');
    t.deepEqual(normalise(decodePacket(bytes)), normalise(decodeWithMessages(bytes)), hex);
  }
  t.throws(() => decodePacket(Buffer.from('0804220a0807', 'hex')), undefined, 'a truncated payload is an error');
});
