import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import {
  decodePacket, encodePacket, PacketType, isUnknown, dataPacket, windowUpdate, type Packet, type KnownPacket,
} from '../lib/wire/index.js';
import { decodeWithMessages, encodeWithMessages } from '../lib/wire/codec.js';
import { decodeDataPacket } from '../lib/wire/data-codec.js';
import { decodeControlPacket, type ControlPacket } from '../lib/wire/control-codec.js';
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
    t.is(Buffer.from(encodePacket(decoded)).toString('hex'), v.hex);
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

/** Every packet type but DATA, with each of its fields set to each value of its kind. */
function controlPackets(): ControlPacket[] {
  const ids = [0n, 1n, 127n, 128n, 300n, 2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n - 1n, -1n, -(2n ** 63n)];
  const texts = ['', 'tcp', 'c1:443', 'dial tcp 10.0.0.1:443: connect: connection refused ✗', 'x'.repeat(300)];
  const packets: ControlPacket[] = [{ type: PacketType.DRAIN }];
  for (const id of ids) {
    packets.push(
      { type: PacketType.CLOSE_REQ, connectID: id },
      { type: PacketType.DIAL_CLS, random: id },
      { type: PacketType.WINDOW_UPDATE, connectID: id, bytes: ids[ids.length - 1 - ids.indexOf(id)] },
    );
    for (const text of texts) {
      packets.push(
        { type: PacketType.DIAL_REQ, protocol: text.slice(0, 3), address: text, random: id },
        { type: PacketType.DIAL_RSP, error: text, connectID: id, random: BigInt.asIntN(64, -id) },
        { type: PacketType.CLOSE_RSP, error: text, connectID: id },
      );
    }
  }
  return packets;
}

test('control packets take the direct path and write the same bytes as the generated classes', (t) => {
  const packets = controlPackets();
  t.deepEqual(new Set(packets.map((p) => p.type)).size, 7, 'every type but DATA');
  for (const packet of packets) {
    const what = JSON.stringify(packet, (_, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
    const fast = Buffer.from(encodePacket(packet));
    const reference = Buffer.from(encodeWithMessages(packet));
    t.true(fast.equals(reference), `encoding of ${what}`);
    t.deepEqual(decodeControlPacket(reference), packet, `the direct path reads what the generated classes write: ${what}`);
    t.deepEqual(decodePacket(reference), decodeWithMessages(reference), `decoding of ${what}`);
  }
});

test('control shapes the direct path does not take still decode by the protobuf rules', (t) => {
  const cases = {
    'no payload': '0802',
    'payload before type': '2a0208070802',
    'type twice, last wins': '080608022a020807',
    'unknown trailing field': '08022a020807' + '7801',
    'unknown field in the payload': '08022a0408077801',
    'payload twice: merged, last connectID wins': '08022a0208072a020809',
    'connectID twice: last wins': '08022a0408070809',
    'payload of another type': '080212051203613a31',
    'int64 as a negative ten-byte varint': '08022a0b08ffffffffffffffffff01',
  };
  for (const [name, hex] of Object.entries(cases)) {
    const bytes = Buffer.from(hex, 'hex');
    t.deepEqual(decodePacket(bytes), decodeWithMessages(bytes), name);
  }
  t.truthy(decodeControlPacket(Buffer.from('0802', 'hex')), 'a missing payload reads as empty on the direct path too');
  t.is(decodeControlPacket(Buffer.from('08022a0408077801', 'hex')), undefined, 'an unknown field leaves the direct path');
  t.throws(() => decodePacket(Buffer.from('08022a0a0807', 'hex')), undefined, 'a truncated payload is an error');
  t.throws(() => decodePacket(Buffer.from('0802120b1203', 'hex')), undefined, 'a truncated payload of another type is an error');
});
