/**
 * Properties of the parsers that read what peers send: packets (the direct codecs and the
 * generated classes), gRPC message framing, the flow-control extension, call metadata and
 * agent identifiers. test/fuzz.test.ts runs them with a short budget; bench/fuzz.ts runs
 * the same ones for longer and prints each failure with the seed that reproduces it.
 */
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import net from 'node:net';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { PacketDecodeError, decodePacket, decodeWithMessages, encodePacket, encodeWithMessages } from '../lib/wire/codec.js';
import { decodeControlPacket } from '../lib/wire/control-codec.js';
import { decodeDataPacket } from '../lib/wire/data-codec.js';
import { PacketType, isUnknown, type DataPacket, type KnownPacket, type Packet } from '../lib/wire/packet.js';
import { GrpcFramingError, GrpcMessageReader, framePacket } from '../lib/transport/grpc-stream.js';
import { announceFlowControl, negotiateFlowControl, peerWindow } from '../lib/transport/flow-control-metadata.js';
import { Metadata, decodeGrpcMessage, encodeGrpcMessage } from '../lib/transport/grpc-metadata.js';
import { dialHost, parseAgentIdentifiers, validateAgentIdentifiers } from '../lib/wire/agent-identifiers.js';
import { MD_FLOW_CONTROL } from '../lib/wire/protocol.js';
import { packetStreamPair } from '../lib/mux/packet-stream.js';
import { DialingMux } from '../lib/mux/dialing-mux.js';
import { AcceptingMux } from '../lib/mux/accepting-mux.js';
import { createPlainConnectServer } from '../lib/server/http-connect-frontend.js';
import type { TunnelConnection } from '../lib/mux/tunnel-connection.js';
import { Logger } from '../lib/observe/log.js';

/** How a property is run: how many cases, from which seed, and for how long at most. */
export interface FuzzParams {
  numRuns: number;
  seed?: number;
  /** Stop generating cases after this long (the runs done so far count). */
  timeLimitMs?: number;
  /** Report the first failing case as it is, without shrinking it (shrinking re-runs cases). */
  noShrink?: boolean;
}

/** fast-check's parameters for these. */
export function checkParameters(params: FuzzParams): fc.Parameters<unknown> {
  return {
    numRuns: params.numRuns,
    includeErrorInReport: true,
    ...(params.seed === undefined ? {} : { seed: params.seed }),
    ...(params.timeLimitMs === undefined ? {} : { interruptAfterTimeLimit: params.timeLimitMs, markInterruptAsFailure: false }),
    ...(params.noShrink ? { endOnFailure: true } : {}),
  };
}

export interface FuzzResult {
  name: string;
  failed: boolean;
  numRuns: number;
  seed: number;
  /** fast-check's report: the counterexample, its seed and path, and the error. */
  report: string;
}

export interface FuzzProperty {
  name: string;
  /** Cases take real time (sockets, time limits): a long run gives them fewer. */
  slow?: boolean;
  /** Cases in the short budget (npm test). */
  runs: number;
  check(params: FuzzParams): Promise<FuzzResult>;
}

function property<Ts>(name: string, runs: number, build: () => fc.IRawProperty<Ts>, slow = false): FuzzProperty {
  return {
    name,
    runs,
    slow,
    async check(params) {
      const details = await fc.check(build(), checkParameters(params) as fc.Parameters<Ts>);
      return { name, failed: details.failed, numRuns: details.numRuns, seed: details.seed, report: fc.defaultReportMessage(details) ?? '' };
    },
  };
}

// ---- arbitraries ---------------------------------------------------------------------------

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** int64 values, the edges (0, varint boundaries, 2^53, the extremes) more often than chance gives them. */
export const int64 = (): fc.Arbitrary<bigint> => fc.oneof(
  fc.constantFrom(0n, 1n, 127n, 128n, 16_383n, 16_384n, 2n ** 49n - 1n, 2n ** 49n, 2n ** 53n - 1n, 2n ** 53n, INT64_MAX, -1n, INT64_MIN),
  fc.bigInt({ min: 0n, max: 1n << 20n }),
  fc.bigInt({ min: INT64_MIN, max: INT64_MAX }),
);

/** Text that UTF-8 carries exactly (no lone surrogates). */
const text = (maxLength = 40): fc.Arbitrary<string> => fc.oneof(fc.string({ maxLength }), fc.string({ unit: 'binary', maxLength }));

/** Every packet this implementation sends, with every field over its whole range. */
export const knownPacket = (): fc.Arbitrary<KnownPacket> => fc.oneof(
  fc.record({ type: fc.constant(PacketType.DIAL_REQ), protocol: text(8), address: text(), random: int64() }),
  fc.record({ type: fc.constant(PacketType.DIAL_RSP), error: text(), connectID: int64(), random: int64() }),
  fc.record({ type: fc.constant(PacketType.CLOSE_REQ), connectID: int64() }),
  fc.record({ type: fc.constant(PacketType.CLOSE_RSP), error: text(), connectID: int64() }),
  fc.record({ type: fc.constant(PacketType.DATA), connectID: int64(), data: fc.uint8Array({ maxLength: 300 }) }),
  fc.record({ type: fc.constant(PacketType.DATA), connectID: int64(), data: fc.uint8Array({ maxLength: 40 }), error: text() }),
  fc.record({ type: fc.constant(PacketType.DIAL_CLS), random: int64() }),
  fc.constant({ type: PacketType.DRAIN }),
  fc.record({ type: fc.constant(PacketType.WINDOW_UPDATE), connectID: int64(), bytes: int64() }),
);

/** One edit of a byte string: the kinds of damage a broken or hostile peer does to a packet. */
type Edit =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'set'; at: number; value: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; length: number }
  | { kind: 'repeat'; at: number; length: number };

const edit = (): fc.Arbitrary<Edit> => fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.constantFrom(0x00, 0x7f, 0x80, 0xff, 0x08, 0x0a, 0x12, 0x22, 0x2a, 0x82) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 12 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ kind: fc.constant('repeat' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 16 }) }),
);

function applyEdit(bytes: Buffer, e: Edit): Buffer {
  if (bytes.length === 0) return e.kind === 'insert' ? Buffer.from(e.bytes) : bytes;
  const at = e.at % (bytes.length + 1);
  const out = Buffer.from(bytes);
  switch (e.kind) {
    case 'flip':
      if (at < out.length) out[at] ^= 1 << e.bit;
      return out;
    case 'set':
      if (at < out.length) out[at] = e.value;
      return out;
    case 'truncate':
      return out.subarray(0, at);
    case 'insert':
      return Buffer.concat([out.subarray(0, at), e.bytes, out.subarray(at)]);
    case 'delete':
      return Buffer.concat([out.subarray(0, at), out.subarray(at + e.length)]);
    case 'repeat':
      return Buffer.concat([out.subarray(0, at + e.length), out.subarray(at, at + e.length), out.subarray(at + e.length)]);
  }
}

/** Bytes that a peer might send as one packet: noise, valid encodings (joined: protobuf merges them), and valid encodings damaged. */
export const packetBytes = (): fc.Arbitrary<Buffer> => fc.oneof(
  fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
  fc.array(knownPacket(), { minLength: 1, maxLength: 3 }).map((ps) => Buffer.concat(ps.map((p) => encodePacket(p)))),
  fc.tuple(fc.array(knownPacket(), { minLength: 1, maxLength: 2 }), fc.array(edit(), { minLength: 1, maxLength: 4 }))
    .map(([ps, edits]) => edits.reduce(applyEdit, Buffer.concat(ps.map((p) => encodePacket(p))))),
);

// ---- helpers -------------------------------------------------------------------------------

/** A packet in a comparable form (payload bytes as hex). */
export function comparable(p: Packet): unknown {
  return 'data' in p ? { ...p, data: Buffer.from(p.data).toString('hex') } : p;
}

function same(a: Packet, b: Packet): boolean {
  return JSON.stringify(comparable(a), (_, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v)) ===
    JSON.stringify(comparable(b), (_, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v));
}

function describe(value: unknown): string {
  return JSON.stringify(value, (_, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v));
}

/** Decodes, and returns the outcome: a packet, or the error, which must be the typed decode error. */
function decodeOutcome(decode: (b: Uint8Array) => Packet, bytes: Uint8Array): { packet: Packet } | { error: PacketDecodeError } {
  try {
    return { packet: decode(bytes) };
  } catch (err) {
    if (err instanceof PacketDecodeError) return { error: err };
    throw new Error(`decoding ${Buffer.from(bytes).toString('hex')} threw ${String(err)}, not a PacketDecodeError`, { cause: err });
  }
}

/** What a packet sequence means to a multiplexer: DATA of one connection in a row counts as one run of bytes. */
function meaning(packets: readonly Packet[]): string[] {
  const out: unknown[] = [];
  for (const p of packets) {
    const last = out[out.length - 1] as { type: number; connectID: bigint; data: string; error?: string } | undefined;
    if (p.type === PacketType.DATA && !isUnknown(p) && !p.error && last?.type === PacketType.DATA && last.connectID === p.connectID && !last.error) {
      last.data += Buffer.from(p.data).toString('hex');
    } else {
      out.push(comparable(p));
    }
  }
  return out.map((p) => describe(p));
}

/** Cuts `bytes` at the given points (taken modulo its length), in order. */
function cut(bytes: Buffer, points: readonly number[]): Buffer[] {
  const at = [...new Set(points.map((p) => (bytes.length === 0 ? 0 : p % bytes.length)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let from = 0;
  for (const p of at) {
    if (p > from) chunks.push(bytes.subarray(from, p));
    from = Math.max(from, p);
  }
  chunks.push(bytes.subarray(from));
  return chunks;
}

/** A logger that keeps its lines to itself (properties make many peers misbehave). */
class QuietLogger extends Logger {
  override enabled(): boolean {
    return false;
  }
}
const quiet = new QuietLogger('fuzz');

// ---- properties ----------------------------------------------------------------------------

export const WIRE_PROPERTIES: FuzzProperty[] = [
  property('packet decoder: any bytes decode to a packet or a PacketDecodeError, on both paths', 2000, () =>
    fc.property(packetBytes(), (bytes) => {
      decodeOutcome(decodePacket, bytes);
      decodeOutcome(decodeWithMessages, bytes);
    })),

  property('packet codec: decode(encode(p)) is p, and the direct encoder writes the generated classes\' bytes', 1500, () =>
    fc.property(knownPacket(), (packet) => {
      const bytes = encodePacket(packet);
      const reference = Buffer.from(encodeWithMessages(packet));
      if (!bytes.equals(reference)) throw new Error(`${describe(packet)}: direct ${bytes.toString('hex')}, generated ${reference.toString('hex')}`);
      const expected: Packet = packet.type === PacketType.DATA && !packet.error ? { type: packet.type, connectID: packet.connectID, data: packet.data } : packet;
      for (const [path, decode] of [['decodePacket', decodePacket], ['decodeWithMessages', decodeWithMessages]] as const) {
        const decoded = decode(bytes);
        if (!same(decoded, expected)) throw new Error(`${path} of ${describe(packet)} gave ${describe(decoded)}`);
      }
    })),

  property('packet decoder: the direct codecs agree with the generated classes on any bytes', 2000, () =>
    fc.property(packetBytes(), (bytes) => {
      const reference = decodeOutcome(decodeWithMessages, bytes);
      const direct = decodeOutcome(decodePacket, bytes);
      const hex = bytes.toString('hex');
      if ('error' in reference !== 'error' in direct) throw new Error(`${hex}: generated ${describe(reference)}, direct ${describe(direct)}`);
      if ('packet' in reference && 'packet' in direct && !same(reference.packet, direct.packet)) {
        throw new Error(`${hex}: generated ${describe(reference.packet)}, direct ${describe(direct.packet)}`);
      }
      for (const [path, decode] of [['data', decodeDataPacket], ['control', decodeControlPacket]] as const) {
        const fast = decode(bytes);
        if (fast === undefined) continue;
        if (!('packet' in reference) || !same(fast, reference.packet)) throw new Error(`${hex}: the ${path} codec gave ${describe(fast)}, generated ${describe(reference)}`);
      }
    })),

  property('gRPC framing: packets framed and cut anywhere come out as the same packets', 800, () =>
    fc.property(fc.array(knownPacket(), { maxLength: 8 }), fc.array(fc.nat(), { maxLength: 12 }), (packets, points) => {
      const bytes = Buffer.concat(packets.flatMap((p) => framePacket(p)));
      const reader = new GrpcMessageReader(4 * 1024 * 1024);
      const out: Packet[] = [];
      for (const chunk of cut(bytes, points)) reader.push(Buffer.from(chunk), (p) => out.push(p));
      if (!reader.idle) throw new Error('the reader is not between messages after whole messages');
      const expected: Packet[] = packets.map((p) => (p.type === PacketType.DATA && !p.error ? { type: p.type, connectID: p.connectID, data: p.data } : p));
      const [got, want] = [meaning(out), meaning(expected)].map((m) => m.filter((p) => !/"type":4,"connectID":"-?\d+n","data":""}$/.test(p)));
      if (describe(got) !== describe(want)) throw new Error(`sent ${describe(want)}\nread ${describe(got)}`);
    })),

  property('gRPC framing: any byte stream, cut anywhere, yields packets or a typed error, and the same either way', 1500, () =>
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 80 }).map((b) => Buffer.from(b)),
        fc.tuple(fc.array(knownPacket(), { minLength: 1, maxLength: 4 }), fc.array(edit(), { minLength: 1, maxLength: 3 }))
          .map(([ps, edits]) => edits.reduce(applyEdit, Buffer.concat(ps.flatMap((p) => framePacket(p))))),
      ),
      fc.array(fc.nat(), { maxLength: 8 }),
      fc.integer({ min: 0, max: 200 }),
      (bytes, points, limit) => {
        const readAll = (chunks: Buffer[]) => {
          const reader = new GrpcMessageReader(limit);
          const out: Packet[] = [];
          try {
            for (const chunk of chunks) reader.push(Buffer.from(chunk), (p) => out.push(p));
            return { packets: meaning(out), idle: reader.idle };
          } catch (err) {
            if (err instanceof GrpcFramingError || err instanceof PacketDecodeError) return { packets: meaning(out), error: err.constructor.name };
            throw new Error(`reading ${bytes.toString('hex')} threw ${String(err)}`, { cause: err });
          }
        };
        const whole = readAll([bytes]);
        const pieces = readAll(cut(bytes, points));
        // A DATA payload streams out as it comes, so a stream that breaks off or fails may
        // have handed on more in one of the two; a stream of whole messages reads the same.
        if (!('error' in whole) && whole.idle && describe(whole) !== describe(pieces)) throw new Error(`${bytes.toString('hex')}: whole ${describe(whole)}, in pieces ${describe(pieces)}`);
      })),
];

export const METADATA_PROPERTIES: FuzzProperty[] = [
  property('flow-control metadata: any announcement gives undefined or a safe window of at least 16 KiB; ours round-trips', 1000, () =>
    fc.property(
      fc.array(fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.nat().map((n) => `window=${n}`), fc.bigInt({ min: 0n, max: 10n ** 30n }).map((n) => `x;window=${n},y`), fc.integer(), fc.constant(undefined)), { maxLength: 3 }),
      fc.integer({ min: 1, max: 2 ** 40 }),
      (values, maxWindow) => {
        const md = { get: (key: string) => (key === MD_FLOW_CONTROL ? values : []), set: () => undefined };
        const window = peerWindow(md);
        if (window !== undefined && (!Number.isSafeInteger(window) || window < 16 * 1024)) throw new Error(`window ${window} from ${describe(values)}`);
        const negotiated = negotiateFlowControl(md, maxWindow);
        if ((negotiated === undefined) !== (window === undefined)) throw new Error('negotiation disagrees with the announced window');
        if (negotiated && (negotiated.receiveWindow < 16 * 1024 || !Number.isSafeInteger(negotiated.receiveWindow))) throw new Error(`receive window ${negotiated.receiveWindow}`);
        const ours = new Metadata();
        announceFlowControl(ours, maxWindow);
        const announced = peerWindow(ours);
        if (announced === undefined || announced < 16 * 1024) throw new Error(`our announcement for ${maxWindow} read back as ${announced}`);
      })),

  property('call metadata: any raw headers parse; keys are lower case, values kept in order, gRPC and HTTP/2 keys left out', 1000, () =>
    fc.property(fc.array(fc.oneof(fc.string(), fc.constantFrom(':path', 'grpc-timeout', 'Content-Type', 'te', 'AgentID', 'agentid', 'x-bin', 'serverCount', 'tke-push-for')), { maxLength: 12 }), (raw) => {
      const md = Metadata.fromRawHeaders(raw);
      const expected = new Map<string, string[]>();
      for (let i = 0; i + 1 < raw.length; i += 2) {
        const key = raw[i].toLowerCase();
        if (key.startsWith(':') || key.startsWith('grpc-') || ['content-type', 'te', 'user-agent'].includes(key) || key.endsWith('-bin')) continue;
        expected.set(key, [...(expected.get(key) ?? []), raw[i + 1]]);
      }
      for (const [key, values] of expected) {
        if (describe(md.get(key)) !== describe(values)) throw new Error(`${key}: ${describe(md.get(key))}, expected ${describe(values)}`);
        if (describe(md.get(key.toUpperCase())) !== describe(md.get(key))) throw new Error(`${key}: lookups depend on case`);
      }
      const headers = md.toHeaders();
      for (const key of Object.keys(headers)) if (!expected.has(key)) throw new Error(`unexpected key ${key}`);
      Metadata.fromHeaders(headers as Record<string, string | string[]>);
    })),

  property('grpc-message: any text survives percent-encoding, and any received text decodes without throwing', 1000, () =>
    fc.property(text(80), fc.string({ unit: 'binary-ascii' }), (message, received) => {
      const encoded = encodeGrpcMessage(message);
      if (!/^[\x20-\x7e]*$/.test(encoded)) throw new Error(`encoded ${JSON.stringify(encoded)} is not printable ASCII`);
      if (decodeGrpcMessage(encoded) !== message) throw new Error(`${JSON.stringify(message)} came back as ${JSON.stringify(decodeGrpcMessage(encoded))}`);
      decodeGrpcMessage(received);
    })),

  property('agent identifiers: any query parses, validation throws only a plain Error, dialHost takes any address', 1000, () =>
    fc.property(
      fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.array(fc.tuple(fc.constantFrom('host', 'ipv4', 'ipv6', 'cidr', 'default-route', 'x', ''), fc.string()), { maxLength: 5 }).map((kv) => kv.map(([k, v]) => `${k}=${v}`).join('&'))),
      fc.oneof(fc.string(), fc.constantFrom('[::1]:443', '[::1]', 'a:1', '::1', 'a:b:c', '[', ']:', '[]:1')),
      (query, address) => {
        const ids = parseAgentIdentifiers(query);
        for (const list of [ids.host, ids.ipv4, ids.ipv6, ids.cidr]) if (!Array.isArray(list) || list.some((v) => typeof v !== 'string')) throw new Error(`identifiers of ${query}`);
        try {
          validateAgentIdentifiers(query);
        } catch (err) {
          if (!(err instanceof Error) || !/unknown agent identifier type/.test(err.message)) throw err;
        }
        if (typeof dialHost(address) !== 'string') throw new Error(`dialHost(${address})`);
      })),
];

/** One thing a hostile peer does to a connection a multiplexer dialed through it. */
type PeerAction =
  | { kind: 'grant'; own: boolean; bytes: bigint }
  | { kind: 'data'; own: boolean; length: number };

const peerAction = (): fc.Arbitrary<PeerAction> => fc.oneof(
  fc.record({ kind: fc.constant('grant' as const), own: fc.boolean(), bytes: fc.oneof(int64(), fc.bigInt({ min: -100_000n, max: 100_000n })) }),
  fc.record({ kind: fc.constant('data' as const), own: fc.boolean(), length: fc.oneof(fc.integer({ min: 0, max: 4096 }), fc.integer({ min: 4096, max: 40_000 })) }),
);

/**
 * A DialingMux with flow control against a peer that answers the dial and then sends
 * arbitrary WINDOW_UPDATEs and DATA, for its connection and for others. The local reader
 * reads nothing, so the window stays as announced.
 */
async function hostileWindows(receiveWindow: number, sendWindow: number, actions: readonly PeerAction[], write: number): Promise<void> {
  const [local, remote] = packetStreamPair();
  const mux = new DialingMux(local, { flowControl: { sendWindow, receiveWindow }, log: quiet, maxDataSize: 16 * 1024 });
  const written: KnownPacket[] = [];
  const waiters: Array<{ match: (p: KnownPacket) => boolean; resolve: () => void }> = [];
  remote.on('data', (p: KnownPacket) => {
    written.push(p);
    if (p.type === PacketType.DIAL_REQ) remote.write({ type: PacketType.DIAL_RSP, random: p.random, connectID: 7n, error: '' });
    for (const w of waiters.splice(0)) if (w.match(p)) w.resolve(); else waiters.push(w);
  });
  const answered = (match: (p: KnownPacket) => boolean) => new Promise<void>((resolve) => waiters.push({ match, resolve }));
  try {
    const conn: TunnelConnection = await mux.dial('target:1');
    conn.on('error', () => undefined);
    conn.pause();
    const payload = Buffer.alloc(write, 0x5a);
    if (write > 0) conn.write(payload);
    let delivered = 0;
    let granted = 0;
    const sent = createHash('sha256');
    for (const a of actions) {
      const connectID = a.own ? 7n : 8n;
      if (a.kind === 'grant') {
        remote.write({ type: PacketType.WINDOW_UPDATE, connectID, bytes: a.bytes });
        if (a.own && a.bytes > 0n) granted += Number(a.bytes);
      } else {
        const data = Buffer.alloc(a.length, a.length & 0xff);
        remote.write({ type: PacketType.DATA, connectID, data } satisfies DataPacket);
        if (a.own && delivered <= receiveWindow) {
          delivered += a.length;
          if (delivered <= receiveWindow) sent.update(data);
        }
      }
    }
    // A close for a connection that never was: its answer comes after everything before it
    // was handled. Again until no more DATA comes (a congested stream sends on 'drain').
    const dataCount = () => written.filter((p) => p.type === PacketType.DATA).length;
    for (let before = -1; before !== dataCount();) {
      before = dataCount();
      const answer = answered((p) => p.type === PacketType.CLOSE_RSP && p.connectID === 999n);
      remote.write({ type: PacketType.CLOSE_REQ, connectID: 999n });
      await answer;
      await new Promise((resolve) => setImmediate(resolve));
    }
    const stats = mux.stats;
    const over = delivered > receiveWindow;
    if (over) {
      if (stats.protocolViolations !== 1) throw new Error(`${delivered} bytes into a window of ${receiveWindow}: ${stats.protocolViolations} violations`);
      if (!conn.destroyed || stats.connections !== 0 || stats.bufferedBytes !== 0) throw new Error(`the over-window connection is still held: ${describe(stats)}`);
      if (!written.some((p) => p.type === PacketType.CLOSE_REQ && p.connectID === 7n)) throw new Error('no CLOSE_REQ for the over-window connection');
    } else {
      if (stats.protocolViolations !== 0 || conn.destroyed) throw new Error(`${delivered} bytes within a window of ${receiveWindow} closed the connection`);
      const got = createHash('sha256');
      let length = 0;
      for (let chunk = conn.read() as Buffer | null; chunk !== null; chunk = conn.read() as Buffer | null) {
        got.update(chunk);
        length += chunk.length;
      }
      if (length !== delivered || got.digest('hex') !== sent.digest('hex')) throw new Error(`read ${length} of ${delivered} bytes, or other bytes`);
    }
    const sentData = written.filter((p): p is DataPacket => p.type === PacketType.DATA && p.connectID === 7n).reduce((n, p) => n + p.data.length, 0);
    if (sentData > sendWindow + granted) throw new Error(`sent ${sentData} bytes with ${sendWindow} + ${granted} granted`);
    if (!over && sentData !== Math.min(write, sendWindow + granted)) throw new Error(`sent ${sentData} of ${write} bytes with ${sendWindow} + ${granted} granted`);
  } finally {
    mux.close();
    remote.destroy();
  }
}

export const MUX_PROPERTIES: FuzzProperty[] = [
  property('flow control: bogus WINDOW_UPDATEs never crash or over-send; DATA beyond the window closes the connection as a protocol violation', 500, () =>
    fc.asyncProperty(
      fc.integer({ min: 16 * 1024, max: 96 * 1024 }),
      fc.integer({ min: 16 * 1024, max: 64 * 1024 }),
      fc.array(peerAction(), { maxLength: 12 }),
      fc.integer({ min: 0, max: 200_000 }),
      (receiveWindow, sendWindow, actions, write) => hostileWindows(receiveWindow, sendWindow, actions, write),
    )),
];

// ---- the HTTP-CONNECT request parser ------------------------------------------------------

/** A request head and whether it is a CONNECT this frontend must serve. */
interface Head {
  bytes: Buffer;
  valid: boolean;
}

const token = (): fc.Arbitrary<string> => fc.stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}$/);
const benignHeader = (): fc.Arbitrary<string> => fc.oneof(
  fc.constantFrom('Host: 127.0.0.1', 'User-Agent: Go-http-client/1.1', 'Proxy-Connection: keep-alive', 'Accept: */*'),
  fc.tuple(token(), fc.stringMatching(/^[\x21-\x7e]{0,20}$/)).filter(([name]) => !/^(content-length|transfer-encoding|upgrade|connection|expect)$/i.test(name)).map(([n, v]) => `${n}: ${v}`),
);

/** CONNECTs to the echo target that any HTTP/1.1 parser takes. */
const validHead = (): fc.Arbitrary<Head> => fc.tuple(fc.constantFrom('echo:1', '[::1]:1'), fc.array(benignHeader(), { maxLength: 5 }))
  .map(([target, headers]) => ({ bytes: Buffer.from(`CONNECT ${target} HTTP/1.1\r\n${headers.map((h) => `${h}\r\n`).join('')}\r\n`, 'latin1'), valid: true }));

/** Anything a client might send as its head: noise, odd methods, targets, versions and headers, cut short or damaged. */
const anyHead = (): fc.Arbitrary<Head> => fc.oneof(
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 120 }).map((b) => ({ bytes: Buffer.from(b), valid: false })) },
  {
    weight: 4,
    arbitrary: fc.tuple(
      fc.oneof(fc.constantFrom('CONNECT', 'GET', 'POST', 'connect', 'PRI', 'OPTIONS', 'HEAD'), token(), fc.string({ maxLength: 8 })),
      fc.oneof(fc.constantFrom('echo:1', 'refuse:1', 'echo', 'echo:', ':1', 'echo:99999', 'echo:1/x', '/', '*', 'http://echo:1/', '[::1]:1', '[zz]:1', 'a@b:1', ''), fc.string({ maxLength: 20 })),
      fc.oneof(fc.constantFrom('HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/1.x', 'http/1.1', ''), fc.string({ maxLength: 8 })),
      fc.array(fc.oneof(benignHeader(), fc.constantFrom('Content-Length: 5', 'Content-Length: -1', 'Content-Length: 1, 2', 'Transfer-Encoding: chunked', 'Upgrade: websocket', 'Connection: upgrade', 'Expect: 100-continue', 'X: a\rb', ' folded', 'NoColon', `Big: ${'x'.repeat(20_000)}`), fc.string({ maxLength: 30 })), { maxLength: 5 }),
      fc.constantFrom('\r\n', '\n'),
      fc.oneof({ weight: 6, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
    ).map(([method, target, version, headers, eol, complete]) => ({
      bytes: Buffer.from(`${method} ${target} ${version}${eol}${headers.map((h) => `${h}${eol}`).join('')}${complete ? eol : ''}`, 'latin1'),
      valid: false,
    })),
  },
  { weight: 2, arbitrary: fc.tuple(validHead(), fc.array(edit(), { minLength: 1, maxLength: 3 })).map(([h, edits]) => ({ bytes: edits.reduce(applyEdit, h.bytes), valid: false })) },
);

/** What a client of the frontend saw: the bytes until the server closed or established the tunnel, or until it gave up waiting. */
function responseOf(socket: net.Socket, waitMs: number): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    let text = '';
    const timer = setTimeout(() => resolve({ text, closed: false }), waitMs);
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString('latin1');
      if (/^HTTP\/1\.1 200 [^\r\n]*\r\n\r\n/.test(text)) {
        clearTimeout(timer);
        resolve({ text, closed: false });
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => { clearTimeout(timer); resolve({ text, closed: true }); });
  });
}

/** Statuses a refused CONNECT may get: malformed, forbidden, not CONNECT, too late, or the dial's failure. */
const REFUSALS = new Set([400, 403, 405, 408, 500, 502, 503, 504]);

export interface HttpConnectFixture {
  path: string;
  /** Connections open on the frontend's server, and tunneled connections open on both ends. */
  open(): Promise<{ sockets: number; tunneled: number }>;
  close(): Promise<void>;
}

/**
 * The HTTP-CONNECT frontend on a unix socket, dialing through a multiplexer pair to an
 * in-process echo target (`echo:1`; `refuse:1` fails the dial), with short time limits.
 */
let fixtures = 0;

export async function httpConnectFixture(dir: string, requestHeadMs = 300): Promise<HttpConnectFixture> {
  const [near, far] = packetStreamPair();
  const dialer = new DialingMux(near, { log: quiet });
  const acceptor = new AcceptingMux(far, async (request) => {
    if (request.address === 'echo:1' || request.address === '[::1]:1') return new PassThrough();
    throw new Error(`dial tcp ${request.address}: connection refused`);
  }, { log: quiet });
  const server = createPlainConnectServer({ dial: (address, options) => dialer.dial(address, options), log: quiet, limits: { handshakeMs: 1_000, requestHeadMs } });
  const path = join(dir, `connect-${process.pid}-${++fixtures}.sock`);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    path,
    open: async () => ({
      sockets: await new Promise<number>((resolve) => server.getConnections((_, n) => resolve(n))),
      tunneled: dialer.stats.connections + acceptor.stats.connections,
    }),
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      dialer.close();
      acceptor.close();
    },
  };
}

/** Polls `check` until it holds, for up to `ms`. */
async function within(ms: number, check: () => Promise<boolean>): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Sends one head to the frontend and checks how it was answered, and that nothing stays open. */
async function tryHead(fixture: HttpConnectFixture, head: Head, requestHeadMs: number): Promise<void> {
  const socket = net.connect(fixture.path);
  await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
  const what = JSON.stringify(head.bytes.toString('latin1').slice(0, 200));
  try {
    if (head.valid) {
      const established = new Promise<Buffer>((resolve, reject) => {
        let got = Buffer.alloc(0);
        const onData = (chunk: Buffer) => {
          got = Buffer.concat([got, chunk]);
          const end = got.indexOf('\r\n\r\n');
          if (end < 0) return;
          socket.off('data', onData);
          if (end + 4 < got.length) reject(new Error(`bytes after the 200 before the client spoke, for ${what}`));
          resolve(got.subarray(0, end));
        };
        socket.on('data', onData);
        socket.once('close', () => reject(new Error(`closed without a 200 for ${what}: ${got.toString('latin1')}`)));
      });
      socket.write(head.bytes);
      const status = (await established).toString('latin1');
      if (!status.startsWith('HTTP/1.1 200 ')) throw new Error(`${what} got ${status}`);
      const payload = Buffer.alloc(64 * 1024 + (head.bytes.length % 997), head.bytes.length & 0xff);
      const echoed = await new Promise<Buffer>((resolve, reject) => {
        const chunks: Buffer[] = [];
        let n = 0;
        socket.on('data', (c: Buffer) => { chunks.push(c); n += c.length; if (n >= payload.length) resolve(Buffer.concat(chunks)); });
        socket.once('close', () => reject(new Error(`closed after ${n} of ${payload.length} echoed bytes`)));
        socket.write(payload);
      });
      const digest = (b: Buffer) => createHash('sha256').update(b).digest('hex');
      if (echoed.length !== payload.length || digest(echoed) !== digest(payload)) throw new Error(`echo of ${payload.length} bytes came back as ${echoed.length} other bytes`);
      socket.destroy();
    } else {
      const response = responseOf(socket, requestHeadMs + 3_000);
      socket.write(head.bytes);
      const { text, closed } = await response;
      const status = /^HTTP\/1\.1 (\d{3}) /.exec(text);
      if (status && Number(status[1]) === 200) {
        socket.destroy();
      } else {
        if (!closed) throw new Error(`the frontend left the connection open after ${what}: ${JSON.stringify(text)}`);
        if (!status || !REFUSALS.has(Number(status[1]))) throw new Error(`${what} got ${JSON.stringify(text.slice(0, 200))}`);
      }
    }
  } finally {
    socket.destroy();
  }
  if (!(await within(2_000, async () => { const o = await fixture.open(); return o.sockets === 0 && o.tunneled === 0; }))) {
    throw new Error(`after ${what}: still open ${describe(await fixture.open())}`);
  }
}

/** The frontend's head parsing, against arbitrary and valid heads. */
export function httpConnectProperties(dir: string): FuzzProperty[] {
  const requestHeadMs = 200;
  const against = (name: string, runs: number, heads: fc.Arbitrary<Head>): FuzzProperty => property(name, runs, () => {
    let fixture: HttpConnectFixture | undefined;
    return fc.asyncProperty(heads, async (head) => {
      fixture ??= await httpConnectFixture(dir, requestHeadMs);
      await tryHead(fixture, head, requestHeadMs);
    }).afterEach(async () => {
      await fixture?.close();
      fixture = undefined;
    });
  }, true);
  return [
    against('HTTP-CONNECT: any request head gets a refusal (400, 405, 408, ...) and a closed connection, or a working tunnel; nothing stays open', 150, anyHead()),
    against('HTTP-CONNECT: valid CONNECTs with any benign headers get 200 and carry their bytes intact', 40, validHead()),
  ];
}
