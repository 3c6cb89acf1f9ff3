import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { once } from 'node:events';
import { Duplex, getDefaultHighWaterMark, setDefaultHighWaterMark } from 'node:stream';
import {
  AcceptingMux, DialingMux, DialError, packetStreamPair, type DialHandler, type PacketStream,
} from '../lib/mux/index.js';
import {
  PacketType, closeRequest, dataPacket, dialRequest, dialResponse, type Packet,
} from '../lib/wire/index.js';
import { ERR_UNKNOWN_CONNECT_ID, ERR_UNRECOGNIZED_CONNECT_ID } from '../lib/wire/protocol.js';
import { eventually } from './helpers/system.js';
import { SOCKET_HIGH_WATER_MARK, raiseSocketHighWaterMark, splice } from '../lib/mux/splice.js';
import { GRANT_SHARE, TunnelConnection, WINDOW_GROWTH } from '../lib/mux/tunnel-connection.js';

/** A TCP server on 127.0.0.1 that echoes (or answers with the sha256 of what it got). */
async function echoServer(): Promise<{ port: number; close(): void; sockets: Set<net.Socket> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.pipe(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as net.AddressInfo).port, sockets, close: () => { for (const s of sockets) s.destroy(); server.close(); } };
}

const tcpHandler: DialHandler = (request) => new Promise((resolve, reject) => {
  const [host, port] = request.address.split(':');
  const socket = net.connect(Number(port), host);
  socket.once('connect', () => resolve(socket));
  socket.once('error', reject);
});

function pair(handler: DialHandler = tcpHandler, flow = true) {
  const [a, b] = packetStreamPair();
  const fc = flow ? { sendWindow: 256 * 1024, receiveWindow: 256 * 1024 } : undefined;
  const dialer = new DialingMux(a, { name: 'test-dialer', flowControl: fc });
  const acceptor = new AcceptingMux(b, handler, { name: 'test-acceptor', flowControl: fc });
  return { dialer, acceptor, a, b };
}

async function roundTrip(conn: Duplex, size: number): Promise<boolean> {
  const payload = randomBytes(size);
  const got: Buffer[] = [];
  let received = 0;
  const done = new Promise<void>((resolve) => {
    conn.on('data', (chunk: Buffer) => { got.push(chunk); received += chunk.length; if (received >= size) resolve(); });
  });
  conn.write(payload);
  await done;
  const digest = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  return digest(Buffer.concat(got)) === digest(payload);
}

test('dial, echo data both ways, close: tables empty on both ends', async (t) => {
  const echo = await echoServer();
  const { dialer, acceptor } = pair();
  const conn = await dialer.dial(`127.0.0.1:${echo.port}`);
  t.is(conn.connectID, 1n);
  t.true(await roundTrip(conn, 3 * 1024 * 1024 + 17));
  conn.end();
  await once(conn, 'close');
  await eventually(() => dialer.stats.connections === 0 && acceptor.stats.connections === 0 && echo.sockets.size === 0, 5_000, 'tables and target sockets empty');
  t.pass();
  echo.close();
});

test('connectIDs count from 1 per stream and many connections interleave intact', async (t) => {
  const echo = await echoServer();
  const { dialer, acceptor } = pair();
  const conns = await Promise.all(Array.from({ length: 20 }, () => dialer.dial(`127.0.0.1:${echo.port}`)));
  t.deepEqual(conns.map((c) => c.connectID).sort((x, y) => Number(x - y)), Array.from({ length: 20 }, (_, i) => BigInt(i + 1)));
  const results = await Promise.all(conns.map((c, i) => roundTrip(c, 100_000 + i * 7919)));
  t.true(results.every(Boolean));
  for (const c of conns) c.destroy();
  await eventually(() => acceptor.stats.connections === 0, 5_000, 'accepting end empty');
  echo.close();
});

test('a refused dial rejects with the acceptor error text and leaves nothing behind', async (t) => {
  const { dialer, acceptor } = pair(async () => { throw new Error('dial tcp 10.0.0.1:80: connect: connection refused'); });
  const err = await t.throwsAsync(dialer.dial('10.0.0.1:80'), { instanceOf: DialError });
  t.is(err?.message, 'dial tcp 10.0.0.1:80: connect: connection refused');
  t.is(dialer.stats.pendingDials, 0);
  t.is(acceptor.stats.pendingDials, 0);
});

test('a dial timeout sends DIAL_CLS, which cancels the dial on the accepting end', async (t) => {
  let aborted = false;
  const { dialer, acceptor } = pair((_req, signal) => new Promise((_resolve, reject) => {
    signal.addEventListener('abort', () => { aborted = true; reject(new Error('cancelled')); });
  }));
  await t.throwsAsync(dialer.dial('x:1', { timeoutMs: 50 }), { message: /within 50 ms/ });
  await eventually(() => aborted, 5_000, 'the accepting end saw DIAL_CLS');
  t.is(acceptor.stats.pendingDials, 0);
});

test('when the stream ends, open connections close and pending dials fail at once', async (t) => {
  const echo = await echoServer();
  const { dialer, a } = pair((req, signal) => req.address === 'hang:1' ? new Promise(() => { void signal; }) : tcpHandler(req, signal));
  const conn = await dialer.dial(`127.0.0.1:${echo.port}`);
  const pendingDial = dialer.dial('hang:1');
  const closed = new Promise((resolve) => conn.on('close', resolve));
  conn.on('error', () => {});
  a.destroy();
  await t.throwsAsync(pendingDial, { instanceOf: DialError, message: /closed before answering/ });
  await closed;
  t.is(dialer.stats.connections, 0);
  await eventually(() => echo.sockets.size === 0, 5_000, 'target sockets closed');
  echo.close();
});

/** Drives one end of a packet stream by hand, as a misbehaving or reference peer would. */
function rawPeer(stream: PacketStream) {
  const received: Packet[] = [];
  stream.on('data', (p: Packet) => received.push(p));
  return { received, send: (p: Packet) => stream.write(p) };
}

test('the accepting end answers stray packets as the reference agent does', async (t) => {
  const [a, b] = packetStreamPair();
  new AcceptingMux(b, tcpHandler, { name: 'agent' });
  const peer = rawPeer(a);
  peer.send(dataPacket(77n, Buffer.from('x')));
  peer.send(closeRequest(78n));
  peer.send({ type: 99, unknown: true });
  peer.send(dataPacket(0n, Buffer.from('ignored')));
  await eventually(() => peer.received.length >= 2, 5_000, 'two answers');
  t.deepEqual(received(peer), [
    { type: PacketType.CLOSE_RSP, connectID: 77n, error: ERR_UNRECOGNIZED_CONNECT_ID },
    { type: PacketType.CLOSE_RSP, connectID: 78n, error: ERR_UNKNOWN_CONNECT_ID },
  ]);
});

test('stray DATA that arrives in pieces (one message cut by the transport) is answered once', async (t) => {
  const [a, b] = packetStreamPair();
  const agent = new AcceptingMux(b, tcpHandler, { name: 'agent' });
  const peer = rawPeer(a);
  for (let i = 0; i < 5; i++) peer.send(dataPacket(77n, Buffer.from(`piece ${i}`)));
  peer.send(dataPacket(76n, Buffer.from('another connection')));
  peer.send(closeRequest(78n));
  peer.send(dataPacket(77n, Buffer.from('a later message')));
  await eventually(() => peer.received.length >= 4, 5_000, 'four answers');
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.deepEqual(received(peer).map((p) => [p.type, (p as { connectID: bigint }).connectID]), [
    [PacketType.CLOSE_RSP, 77n],
    [PacketType.CLOSE_RSP, 76n],
    [PacketType.CLOSE_RSP, 78n],
    [PacketType.CLOSE_RSP, 77n],
  ]);
  t.is(agent.stats.strayPackets, 4, 'counted once per answer: three runs of stray DATA and the CLOSE_REQ for an unknown id');
});

test('a peer that sends beyond the window it was given gets that connection closed; the others go on', async (t) => {
  const echo = await echoServer();
  // The target of "stalled:1" never reads, so the connection grants no credit back.
  const stalledTargets: Duplex[] = [];
  const handler: DialHandler = async (req, signal) => {
    if (req.address !== 'stalled:1') return tcpHandler(req, signal);
    const target = new Duplex({ read() {}, write() { /* never done */ } });
    stalledTargets.push(target);
    return target;
  };
  const [a, b] = packetStreamPair();
  const window = 64 * 1024;
  const agent = new AcceptingMux(b, handler, { name: 'agent', flowControl: { sendWindow: window, receiveWindow: window } });
  const peer = rawPeer(a);
  peer.send(dialRequest('stalled:1', 1n));
  peer.send(dialRequest(`127.0.0.1:${echo.port}`, 2n));
  await eventually(() => peer.received.filter((p) => p.type === PacketType.DIAL_RSP).length === 2, 5_000, 'both dials answered');
  const idOf = (random: bigint) => (peer.received.find((p) => p.type === PacketType.DIAL_RSP && (p as { random: bigint }).random === random) as { connectID: bigint }).connectID;
  const [stalled, echoed] = [idOf(1n), idOf(2n)];

  peer.send(dataPacket(stalled, Buffer.alloc(window, 1))); // the whole window: allowed
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.is(agent.stats.connections, 2, 'a full window is within the rules');
  // Far more than the window and what the stalled target took before it stopped reading.
  for (let i = 0; i < 8; i++) peer.send(dataPacket(stalled, Buffer.alloc(window, 2)));
  await eventually(() => peer.received.some((p) => p.type === PacketType.CLOSE_RSP && (p as { connectID: bigint }).connectID === stalled), 5_000, 'the overrun connection closed');
  t.is(agent.stats.connections, 1);
  t.is(agent.stats.protocolViolations, 1);
  await eventually(() => stalledTargets[0].destroyed, 5_000, 'its target connection is closed too');

  peer.send(dataPacket(echoed, Buffer.from('still here')));
  await eventually(() => peer.received.some((p) => p.type === PacketType.DATA && (p as { connectID: bigint }).connectID === echoed), 5_000, 'the other connection echoes');
  const echoedBack = peer.received.filter((p) => p.type === PacketType.DATA && (p as { connectID: bigint }).connectID === echoed).map((p) => Buffer.from((p as { data: Uint8Array }).data).toString());
  t.is(echoedBack.join(''), 'still here');
  echo.close();
});

test('a WINDOW_UPDATE that grants no bytes is a stray packet and takes no credit away', async (t) => {
  const sink: Buffer[] = [];
  const { dialer, b } = pair(async () => new Duplex({ read() {}, write(chunk: Buffer, _e, cb) { sink.push(chunk); cb(); } }));
  const conn = await dialer.dial('sink:1');
  // As if the accepting end sent them: a negative grant and an empty one.
  b.write({ type: PacketType.WINDOW_UPDATE, connectID: conn.connectID, bytes: -(2n ** 40n) });
  b.write({ type: PacketType.WINDOW_UPDATE, connectID: conn.connectID, bytes: 0n });
  await eventually(() => dialer.stats.strayPackets === 2, 5_000, 'both counted as stray');
  // Four windows' worth still flows: the sender's credit was not cut.
  const payload = randomBytes(1024 * 1024);
  conn.write(payload);
  await eventually(() => sink.reduce((n, c) => n + c.length, 0) === payload.length, 5_000, 'a megabyte through a 256 KiB window');
  t.true(Buffer.concat(sink).equals(payload));
  conn.destroy();
});

function received(peer: { received: Packet[] }) {
  return peer.received.map((p) => ({ ...p }));
}

test('the dialing end answers stray DATA with CLOSE_REQ and closes what a late DIAL_RSP opened', async (t) => {
  const [a, b] = packetStreamPair();
  const dialer = new DialingMux(a, { name: 'server' });
  const peer = rawPeer(b);
  peer.send(dataPacket(5n, Buffer.from('x')));
  peer.send(dialResponse(12345n, 9n));
  await eventually(() => peer.received.length >= 2, 5_000, 'two answers');
  t.deepEqual(received(peer), [
    { type: PacketType.CLOSE_REQ, connectID: 5n },
    { type: PacketType.CLOSE_REQ, connectID: 9n },
  ]);
  t.is(dialer.stats.connections, 0);
});

test('flow control: a stalled reader holds one window and does not stall the other connections', async (t) => {
  // The accepting end serves an endless source on "source:1" and an echo otherwise.
  const echo = await echoServer();
  const handler: DialHandler = async (req, signal) => {
    if (req.address !== 'source:1') return tcpHandler(req, signal);
    const chunk = Buffer.alloc(64 * 1024, 7);
    return new Duplex({ read() { this.push(chunk); }, write(_c, _e, cb) { cb(); } });
  };
  const { dialer } = pair(handler);
  const stalled = await dialer.dial('source:1');
  stalled.pause(); // never read
  const others = await Promise.all(Array.from({ length: 5 }, () => dialer.dial(`127.0.0.1:${echo.port}`)));
  const ok = await Promise.all(others.map((c) => roundTrip(c, 2 * 1024 * 1024)));
  t.true(ok.every(Boolean));
  // The stalled connection buffers at most its window (plus one packet in flight).
  t.true(stalled.readableLength <= 256 * 1024 + 32 * 1024, `buffered ${stalled.readableLength}`);
  stalled.destroy();
  for (const c of others) c.destroy();
  echo.close();
});

test('without flow control a stalled reader pauses the shared stream instead of buffering without bound', async (t) => {
  const handler: DialHandler = async () => {
    const chunk = Buffer.alloc(64 * 1024, 7);
    return new Duplex({ read() { this.push(chunk); }, write(_c, _e, cb) { cb(); } });
  };
  const { dialer } = pair(handler, false);
  const stalled = await dialer.dial('source:1');
  stalled.pause();
  await new Promise((r) => setTimeout(r, 200));
  t.true(stalled.readableLength < 2 * 1024 * 1024, `buffered ${stalled.readableLength}`);
  stalled.destroy();
});

test('splice: what a tunneled connection yields within one turn of the loop reaches the socket in one write', async (t) => {
  const writes: number[] = [];
  const received: Buffer[] = [];
  const socket = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) { writes.push(1); received.push(chunk); callback(); },
    writev(chunks, callback) { writes.push(chunks.length); for (const c of chunks) received.push(c.chunk as Buffer); callback(); },
  });
  const conn = new Duplex({ read() {}, write(_chunk, _encoding, callback) { callback(); } });
  splice(conn, socket);
  // Three pieces of one DATA payload, as three HTTP/2 frames deliver them, in one turn.
  for (const piece of ['first ', 'second ', 'third']) conn.push(Buffer.from(piece));
  await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setImmediate(resolve));
  t.deepEqual(writes, [3], 'one writev of the three pieces');
  t.is(Buffer.concat(received).toString(), 'first second third');
  conn.push(Buffer.from('later'));
  await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setImmediate(resolve));
  t.deepEqual(writes, [3, 1], 'the next turn writes on its own');
  conn.destroy();
});

/** A tunneled connection whose DATA is recorded, one entry per sendData call (its pieces as given). */
function recordedConnection(options: { maxDataSize?: number; sendWindow?: number; receiveWindow?: number } = {}) {
  const sent: Buffer[][] = [];
  const grants: number[] = [];
  const link = {
    maxDataSize: options.maxDataSize ?? 256 * 1024,
    sendData: (_conn: TunnelConnection, pieces: readonly Buffer[], done: () => void) => { sent.push([...pieces]); done(); },
    sendWindowUpdate: (_conn: TunnelConnection, bytes: number) => { grants.push(bytes); },
    closeLocally: () => undefined,
    forget: () => undefined,
    peerViolation: () => undefined,
    pauseReading: () => undefined,
    resumeReading: () => undefined,
  };
  const flowControl = options.sendWindow === undefined ? undefined : { sendWindow: options.sendWindow, receiveWindow: options.receiveWindow ?? 64 * 1024 };
  const conn = new TunnelConnection(link, { connectID: 1n, address: 'c1:80', pauseThreshold: 1 << 20, flowControl });
  return { conn, sent, grants };
}

const nextTurn = async () => {
  await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setImmediate(resolve));
};

test.serial('splice: with the binaries\' socket high-water mark, a socket gets a whole turn\'s pieces in one write', async (t) => {
  const defaultMark = getDefaultHighWaterMark(false);
  const writesOfFourPieces = async () => {
    const writes: number[] = [];
    const socket = new Duplex({
      read() {},
      write(_chunk: Buffer, _encoding, callback) { writes.push(1); setImmediate(callback); },
      writev(chunks, callback) { writes.push(chunks.length); setImmediate(callback); },
    });
    const conn = new Duplex({ read() {}, write(_chunk, _encoding, callback) { callback(); } });
    splice(conn, socket);
    // Four 16 KiB pieces within one turn, as one 64 KiB socket read of TLS records brings them.
    for (let i = 0; i < 4; i++) conn.push(Buffer.alloc(16 * 1024, i));
    for (let i = 0; i < 6; i++) await new Promise((resolve) => setImmediate(resolve));
    conn.destroy();
    return writes;
  };
  try {
    t.true((await writesOfFourPieces()).length > 1, 'at Node\'s 16 KiB mark the socket is full after one piece');
    raiseSocketHighWaterMark();
    t.is(new net.Socket().writableHighWaterMark, SOCKET_HIGH_WATER_MARK);
    t.deepEqual(await writesOfFourPieces(), [4], 'one writev of the four pieces');
  } finally {
    setDefaultHighWaterMark(false, defaultMark);
  }
});

test('splice: between two tunneled connections, the pieces of one turn go out as one DATA batch, not copied', async (t) => {
  const from = recordedConnection();
  const to = recordedConnection();
  splice(from.conn, to.conn);
  const pieces = ['first ', 'second ', 'third'].map((p) => Buffer.from(p));
  for (const piece of pieces) from.conn.deliver(piece);
  await nextTurn();
  t.is(to.sent.length, 1, 'one batch');
  t.deepEqual(to.sent[0].map(String), ['first ', 'second ', 'third']);
  t.true(to.sent[0].every((piece, i) => piece === pieces[i]), 'each the piece itself, not a copy');
  // And the other way round.
  for (const piece of pieces) to.conn.deliver(piece);
  await nextTurn();
  t.is(from.sent.length, 1);
  t.true(from.sent[0].every((piece, i) => piece === pieces[i]));
  from.conn.destroy();
});

test('splice: what a socket yields goes into the tunneled connection at once, a read at a time', async (t) => {
  const { conn, sent } = recordedConnection();
  const socket = new Duplex({ read() {}, write(_chunk, _encoding, callback) { callback(); } });
  splice(conn, socket);
  const reads = [Buffer.alloc(64 * 1024, 1), Buffer.alloc(64 * 1024, 2)];
  socket.push(reads[0]);
  await new Promise((resolve) => process.nextTick(resolve));
  t.is(sent.length, 1, 'sent within the turn it was read');
  socket.push(reads[1]);
  await nextTurn();
  t.deepEqual(sent.map((s) => s.length), [1, 1]);
  t.true(sent[0][0] === reads[0] && sent[1][0] === reads[1], 'the reads themselves');
  conn.destroy();
});

test('an empty write completes at once and holds up nothing after it', async (t) => {
  const { conn, sent } = recordedConnection({ sendWindow: 1000 });
  const done = new Promise<void>((resolve) => conn.write(Buffer.alloc(0), () => resolve()));
  conn.write('hello');
  conn.cork();
  conn.write(Buffer.alloc(0));
  conn.write(' world');
  conn.uncork();
  await done;
  await nextTurn();
  t.deepEqual(sent.map((batch) => batch.map(String)), [['hello'], [' world']], 'no empty DATA is sent');
  t.is(conn.writableLength, 0);
  conn.destroy();
});

test('a batch of writes is cut at the packet size and at the credit, by slicing its pieces, never copying them', async (t) => {
  const { conn, sent } = recordedConnection({ maxDataSize: 100, sendWindow: 250 });
  const pieces = [Buffer.alloc(60, 1), Buffer.alloc(60, 2), Buffer.alloc(60, 3), Buffer.alloc(120, 4)];
  conn.cork();
  for (const piece of pieces) conn.write(piece);
  conn.uncork();
  await nextTurn();
  t.deepEqual(sent.map((batch) => batch.map((p) => p.length)), [[60, 40], [20, 60, 20], [50]], 'packets of at most 100 bytes until the 250 bytes of credit are used');
  t.true(sent.flat().every((p) => pieces.some((piece) => p.buffer === piece.buffer)), 'every piece a view of a written buffer');
  conn.grantCredit(1000);
  await nextTurn();
  t.deepEqual(sent.slice(3).map((batch) => batch.map((p) => p.length)), [[50]], 'the rest once credit comes');
  t.deepEqual(Buffer.concat(sent.flat()), Buffer.concat(pieces), 'every byte, in order');
  conn.destroy();
});

test('credit goes back a sixteenth of the window at a time, and the window grows fourfold while the reader keeps up', async (t) => {
  const window = 1024 * 1024;
  const piece = 64 * 1024;
  const { conn, grants } = recordedConnection({ sendWindow: window, receiveWindow: window });
  let read = 0;
  conn.on('data', (chunk: Buffer) => { read += chunk.length; });
  // The peer sends within the credit it has: the window, plus whatever was granted since.
  let sent = 0;
  const credit = () => window + grants.reduce((a, b) => a + b, 0) - sent;
  while (sent < 8 * window) {
    t.true(credit() >= piece, `credit left after ${sent} bytes`);
    conn.deliver(Buffer.alloc(piece));
    sent += piece;
    await nextTurn();
  }
  t.is(read, sent);
  t.true(grants.length >= 8 * GRANT_SHARE / WINDOW_GROWTH, `${grants.length} grants for eight windows`);
  t.true(grants.every((g) => g >= window / GRANT_SHARE), 'no grant below a sixteenth of the announced window');
  // Everything consumed, less what is not granted yet, plus the growth to four windows.
  const granted = grants.reduce((a, b) => a + b, 0);
  t.true(granted > sent + (WINDOW_GROWTH - 1) * window - window / 4 && granted <= sent + (WINDOW_GROWTH - 1) * window, `granted ${granted}`);
  conn.destroy();
});

test('a reader that does not read grants nothing and its window does not grow', async (t) => {
  const window = 1024 * 1024;
  const { conn, grants } = recordedConnection({ sendWindow: window, receiveWindow: window });
  conn.pause();
  for (let sent = 0; sent < window; sent += 64 * 1024) conn.deliver(Buffer.alloc(64 * 1024));
  await nextTurn();
  t.deepEqual(grants, []);
  t.is(conn.bufferedBytes, window, 'the whole window waits for the reader');
  conn.destroy();
});

// ---- closes never overtake data ------------------------------------------------------------

/** Both ends of a TCP connection on 127.0.0.1: sockets close as real ones do when their peer ends. */
async function socketPair(): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[net.Socket]>;
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const [near] = await accepted;
  await once(client, 'connect');
  server.close();
  return [near, client];
}

/** A target socket whose far end writes `data` and closes right after, as a server that closes after its response. */
async function closingTarget(data: Buffer): Promise<net.Socket> {
  const [near, far] = await socketPair();
  far.end(data);
  far.resume();
  return near;
}

/** A target socket whose far end reads only once `open` resolves, and collects what it got. */
async function lateReader(open: Promise<void>): Promise<{ target: net.Socket; got: Promise<Buffer> }> {
  const [near, far] = await socketPair();
  far.pause();
  const got = open.then(async () => {
    const chunks: Buffer[] = [];
    far.on('data', (d: Buffer) => chunks.push(d));
    far.resume();
    await once(far, 'end');
    far.end();
    return Buffer.concat(chunks);
  });
  return { target: near, got };
}

for (const flow of [true, false]) {
  test(`a target that closes right after its last write: every byte reaches a reader that was stalled meanwhile (flow control ${flow ? 'on' : 'off'})`, async (t) => {
    const data = randomBytes(3 * 1024 * 1024 + 123);
    const { dialer, acceptor } = pair(() => closingTarget(data), flow);
    const conn = await dialer.dial('source:1');
    // A slow reader: the target closes while its last bytes wait for window (or, without
    // flow control, behind the paused stream).
    const got: Buffer[] = [];
    conn.on('data', (d: Buffer) => {
      got.push(d);
      conn.pause();
      setTimeout(() => conn.resume(), 2);
    });
    await once(conn, 'end');
    t.true(Buffer.concat(got).equals(data), `${Buffer.concat(got).length} of ${data.length} bytes`);
    await eventually(() => dialer.stats.connections === 0 && acceptor.stats.connections === 0, 5_000, 'both tables empty');
    t.is(dialer.stats.strayPackets + acceptor.stats.strayPackets, 0);
  });

  test(`a client that half-closes right after its last write: every byte reaches a target that reads late (flow control ${flow ? 'on' : 'off'})`, async (t) => {
    const data = randomBytes(3 * 1024 * 1024 + 321);
    let open!: () => void;
    const sink = await lateReader(new Promise<void>((resolve) => { open = resolve; }));
    const { dialer, acceptor } = pair(async () => sink.target, flow);
    // As in a frontend: the client's socket spliced to a connection dialed through the tunnel.
    const [client, frontend] = await socketPair();
    splice(await dialer.dial('sink:1'), frontend);
    client.end(data);
    client.resume();
    await new Promise((resolve) => setTimeout(resolve, 100));
    open();
    const got = await sink.got;
    t.true(got.equals(data), `${got.length} of ${data.length} bytes`);
    await eventually(() => dialer.stats.connections === 0 && acceptor.stats.connections === 0, 5_000, 'both tables empty');
    t.is(dialer.stats.strayPackets + acceptor.stats.strayPackets, 0);
  });
}

test('on the wire, the accepting end sends a connection\'s close after its last DATA, never before', async (t) => {
  const data = randomBytes(2 * 1024 * 1024);
  const [a, b] = packetStreamPair();
  const window = 64 * 1024;
  new AcceptingMux(b, () => closingTarget(data), { name: 'agent', flowControl: { sendWindow: window, receiveWindow: window } });
  const peer = rawPeer(a);
  peer.send(dialRequest('source:1', 1n));
  await eventually(() => peer.received.some((p) => p.type === PacketType.DIAL_RSP), 5_000, 'dial answered');
  // Grant credit a window at a time, slowly, so the source has ended long before the last DATA.
  let granted = window;
  while (!peer.received.some((p) => p.type === PacketType.CLOSE_RSP)) {
    await new Promise((resolve) => setTimeout(resolve, 2));
    if (granted < data.length + window) {
      peer.send({ type: PacketType.WINDOW_UPDATE, connectID: 1n, bytes: BigInt(window) });
      granted += window;
    }
  }
  const types = peer.received.map((p) => p.type);
  const close = types.indexOf(PacketType.CLOSE_RSP);
  t.is(types.lastIndexOf(PacketType.DATA) < close, true, 'no DATA after the close');
  const sent = Buffer.concat(peer.received.filter((p) => p.type === PacketType.DATA).map((p) => Buffer.from((p as { data: Uint8Array }).data)));
  t.true(sent.equals(data), `${sent.length} of ${data.length} bytes before the close`);
});

test('a connection destroyed while its DATA waits for a congested stream sends no DATA after its close', async (t) => {
  const [a, b] = packetStreamPair();
  const dialer = new DialingMux(a, { name: 'server' });
  const peer = rawPeer(b);
  b.pause(); // the stream congests: DATA queues in the multiplexer
  const dialing = dialer.dial('c1:80', { random: 7n });
  b.resume();
  await eventually(() => peer.received.some((p) => p.type === PacketType.DIAL_REQ), 5_000, 'dial sent');
  peer.send(dialResponse(7n, 1n));
  const conn = await dialing;
  b.pause();
  for (let i = 0; i < 64; i++) conn.write(Buffer.alloc(64 * 1024, i));
  await new Promise((resolve) => setTimeout(resolve, 20));
  conn.destroy();
  b.resume();
  await eventually(() => peer.received.some((p) => p.type === PacketType.CLOSE_REQ), 5_000, 'close sent');
  await new Promise((resolve) => setTimeout(resolve, 50));
  const types = peer.received.map((p) => p.type);
  t.true(types.lastIndexOf(PacketType.DATA) < types.indexOf(PacketType.CLOSE_REQ), 'what was still queued is dropped, not sent after the close');
});

test('a late DATA or CLOSE_REQ for a connection the accepting end closed is no stray: dropped, and the close answered', async (t) => {
  const [a, b] = packetStreamPair();
  const agent = new AcceptingMux(b, () => closingTarget(Buffer.from('bye')), { name: 'agent' });
  const peer = rawPeer(a);
  peer.send(dialRequest('source:1', 1n));
  await eventually(() => peer.received.some((p) => p.type === PacketType.CLOSE_RSP), 5_000, 'the target closed');
  const before = peer.received.length;
  peer.send(dataPacket(1n, Buffer.from('sent before the close arrived')));
  peer.send(closeRequest(1n));
  await eventually(() => peer.received.length > before, 5_000, 'an answer');
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.deepEqual(received(peer).slice(before), [{ type: PacketType.CLOSE_RSP, connectID: 1n, error: ERR_UNKNOWN_CONNECT_ID }]);
  t.is(agent.stats.strayPackets, 0);
});
