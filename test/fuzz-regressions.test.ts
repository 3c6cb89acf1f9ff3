/**
 * Counterexamples that the properties of harness/fuzz-properties.ts found, kept as plain
 * tests: each failed before its fix.
 */
import test from 'ava';
import * as pb from '../lib/wire/gen/client.js';
import { PacketDecodeError, decodePacket, decodeWithMessages } from '../lib/wire/codec.js';
import { comparable } from '../harness/fuzz-properties.js';

/** Calls of the generated decoder while `fn` runs. */
function generatedDecodes(fn: () => void): number {
  const original = pb.Packet.deserializeBinary.bind(pb.Packet);
  let calls = 0;
  pb.Packet.deserializeBinary = (bytes: Uint8Array) => {
    calls++;
    return original(bytes);
  };
  try {
    fn();
  } finally {
    pb.Packet.deserializeBinary = original;
  }
  return calls;
}

test('a packet whose field claims more bytes than came is refused before the generated classes read it (they take seconds for a few bytes)', (t) => {
  const cases = {
    'dialRequest of ~122 MB in 5 bytes': '12beee963a',
    'closeResponse of 17 bytes in 9': '080332110a80f18a9ba7f0',
    'field number 0': '00a43c1abba3a074',
    'a string inside a payload that runs past the payload': '08022a04120a4142',
    'an overlong varint': '08ffffffffffffffffffff01',
    'a group that is never closed': '0802' + '0b',
    'wire type 7': '0f00',
  };
  for (const [what, hex] of Object.entries(cases)) {
    const calls = generatedDecodes(() => {
      t.throws(() => decodePacket(Buffer.from(hex, 'hex')), { instanceOf: PacketDecodeError }, what);
    });
    t.is(calls, 0, what);
  }
  // Well-formed packets that the direct codecs leave to the generated classes still reach them.
  const merged = Buffer.from('08022a0208072a020809', 'hex');
  t.is(generatedDecodes(() => decodePacket(merged)), 1);
  t.deepEqual(decodePacket(merged), { type: 2, connectID: 9n });
  const unknownGroup = Buffer.from('0802' + '2a020807' + '7b0801' + '7c', 'hex'); // field 15 as a group holding a varint
  t.deepEqual(decodePacket(unknownGroup), { type: 2, connectID: 7n });
});

test('text that is not UTF-8 reads the same on the direct path as in the generated classes', (t) => {
  const cases = [
    // DIAL_RSP whose error holds a NUL, a truncated 4-byte sequence and overlong encodings
    '08011a1d0a0800908080f090808010808080808080801018808080808080808001',
    // DIAL_REQ whose address is a lone continuation byte, or holds one and a lone 0xff
    '1203120180',
    '120512038061ff',
    // DATA whose error ends in a truncated sequence
    '0804220512036162e2',
    '080422041202' + '80e2',
  ];
  for (const hex of cases) {
    const bytes = Buffer.from(hex, 'hex');
    let reference: unknown;
    try {
      reference = comparable(decodeWithMessages(bytes));
    } catch (err) {
      t.true(err instanceof PacketDecodeError, hex);
      t.throws(() => decodePacket(bytes), { instanceOf: PacketDecodeError }, hex);
      continue;
    }
    t.deepEqual(comparable(decodePacket(bytes)), reference, hex);
  }
});
