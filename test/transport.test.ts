import test from 'ava';
import { localAgentCertificate } from '../lib/pki/local-pki.js';
import * as grpc from '@grpc/grpc-js';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import os from 'node:os';
import { once } from 'node:events';
import { Duplex } from 'node:stream';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { certificateSerial, createCa, issueCertificate } from '../lib/pki/certificates.js';
import { join } from 'node:path';
import { agentStreamWindow } from '../lib/transport/http2-windows.js';
import { connectTls } from '../lib/transport/tls-dial.js';
import { agentServiceDefinition } from './helpers/grpc-services.js';
import { DEFAULT_CONNECTION_WINDOW, announceFlowControl, negotiateFlowControl, peerWindow } from '../lib/transport/flow-control-metadata.js';

const AGENT_LISTENER_WINDOW = agentStreamWindow(DEFAULT_CONNECTION_WINDOW);
import { GrpcFramingError, GrpcMessageReader, GrpcPacketStream, framePacket } from '../lib/transport/grpc-stream.js';
import { GrpcServer, type ServerCall } from '../lib/transport/grpc-server.js';
import { GrpcCallError, connect, openCall } from '../lib/transport/grpc-client.js';
import { GrpcStatus, KEEPALIVE, Metadata, decodeGrpcMessage, encodeGrpcMessage } from '../lib/transport/grpc-metadata.js';
import { logger } from '../lib/observe/log.js';
import { PacketType, closeRequest, dataPacket, dialRequest, windowUpdate, type KnownPacket, type Packet } from '../lib/wire/packet.js';
import { AGENT_CONNECT_PATH, PROXY_PATH } from '../lib/wire/protocol.js';
import type { PacketStream } from '../lib/mux/packet-stream.js';
import { workspace, type Workspace } from './helpers/system.js';
import { FileTlsSource, localPkiTlsSource } from '../lib/pki/tls-source.js';
import { encodePacket, decodePacket } from '../lib/wire/codec.js';

const framePacketBody = (p: KnownPacket) => Buffer.from(encodePacket(p));
const decodeBody = (b: Buffer) => decodePacket(b);

const log = logger('test');

/** Consecutive DATA packets of one connection joined: the byte streams the peer sees. */
function joinData(packets: Packet[]): unknown[] {
  const out: unknown[] = [];
  for (const p of packets) {
    const last = out[out.length - 1] as { type: number; connectID: bigint; data: Buffer; error?: string } | undefined;
    if (p.type === PacketType.DATA && last?.type === PacketType.DATA && last.connectID === (p as { connectID: bigint }).connectID && !last.error) {
      last.data = Buffer.concat([last.data, Buffer.from((p as { data: Uint8Array }).data)]);
    } else {
      out.push(p.type === PacketType.DATA ? { ...p, data: Buffer.from((p as { data: Uint8Array }).data) } : p);
    }
  }
  return out;
}

const SAMPLE: KnownPacket[] = [
  dialRequest('c1:443', 2n ** 62n + 12345n),
  dataPacket(1n, Buffer.alloc(70_000, 0x61)),
  dataPacket(2n, Buffer.from('small')),
  dataPacket(2n ** 63n - 1n, Buffer.alloc(40_000, 0x62)),
  { type: PacketType.DATA, connectID: 3n, data: Buffer.alloc(5_000, 0x63), error: 'an error string' },
  dataPacket(4n, Buffer.alloc(0)),
  windowUpdate(1n, 65_536),
  closeRequest(1n),
];

test('gRPC framing: packets read back as the same byte streams however the chunks fall', (t) => {
  const wire = Buffer.concat(SAMPLE.flatMap(framePacket));
  const expected = joinData(SAMPLE);
  for (const size of [1, 3, 5, 7, 100, 16_384, 65_536, wire.length]) {
    const reader = new GrpcMessageReader(4 << 20);
    const got: Packet[] = [];
    for (let pos = 0; pos < wire.length; pos += size) reader.push(wire.subarray(pos, pos + size), (p) => got.push(p));
    t.true(reader.idle, `chunks of ${size}: between messages at the end`);
    t.deepEqual(joinData(got), expected, `chunks of ${size}`);
    if (size === 16_384) t.true(got.length > SAMPLE.length, 'a payload spanning chunks comes out in pieces, without assembling it');
  }
  const [head, payload] = framePacket(SAMPLE[1]);
  t.is(payload, (SAMPLE[1] as unknown as { data: Buffer }).data, 'a large DATA payload is written from where it lies, not copied');
  t.true(head.length < 32);
});

test('gRPC framing: an oversized or compressed message is refused with the status to send', (t) => {
  const big = Buffer.from([0, 0, 0x10, 0, 0]); // 1 MiB announced
  const err = t.throws(() => new GrpcMessageReader(1024).push(big, () => undefined), { instanceOf: GrpcFramingError });
  t.is(err?.code, GrpcStatus.RESOURCE_EXHAUSTED);
  t.regex(err?.message ?? '', /1048576 bytes, over the limit of 1024/);
  const compressed = t.throws(() => new GrpcMessageReader(1024).push(Buffer.from([1, 0, 0, 0, 1, 0]), () => undefined), { instanceOf: GrpcFramingError });
  t.is(compressed?.code, GrpcStatus.UNIMPLEMENTED);
  t.is(decodeGrpcMessage(encodeGrpcMessage('100% fine, naïve\n')), '100% fine, naïve\n');
});

test('the agent stream\'s HTTP/2 window is twice the per-connection window, at least 16 MiB', (t) => {
  t.is(agentStreamWindow(undefined), 16 << 20, 'flow control off (a reference peer): 16 MiB');
  t.is(agentStreamWindow(4 << 20), 16 << 20);
  t.is(agentStreamWindow(DEFAULT_CONNECTION_WINDOW), 2 * DEFAULT_CONNECTION_WINDOW);
  t.is(agentStreamWindow(64 << 20), 128 << 20, 'a long fat link\'s larger --connection-window widens HTTP/2 too');
});

test('the agent listener advertises its receive window and raises the connection window', async (t) => {
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-h2-'));
  const server = new GrpcServer({ receiveWindow: AGENT_LISTENER_WINDOW, log });
  await server.listen({ path: join(dir, 'grpc.sock') });
  const session = http2.connect('http://localhost', { createConnection: () => net.connect(join(dir, 'grpc.sock')) });
  try {
    const [settings] = await once(session, 'remoteSettings') as [http2.Settings];
    t.is(settings.initialWindowSize, AGENT_LISTENER_WINDOW);
    // The connection window arrives as a WINDOW_UPDATE right after the settings.
    const deadline = Date.now() + 5_000;
    while ((session.state.remoteWindowSize ?? 0) < AGENT_LISTENER_WINDOW && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    t.is(session.state.remoteWindowSize, AGENT_LISTENER_WINDOW);
  } finally {
    session.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Packets read from a stream until `done` says they are all there (or 10 s pass). */
function readUntil(stream: PacketStream, done: (got: Packet[]) => boolean): Promise<Packet[]> {
  const got: Packet[] = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${got.length} packets arrived`)), 10_000);
    const onData = (p: Packet) => {
      got.push(p);
      if (done(got)) {
        clearTimeout(timer);
        stream.off('data', onData);
        resolve(got);
      }
    };
    stream.on('data', onData);
    stream.once('error', (err) => { clearTimeout(timer); reject(err); });
  });
}

/** Whether `got` holds all of `expected`: its last DATA as long as the expected one. */
function isComplete(got: unknown[], expected: unknown[]): boolean {
  if (got.length < expected.length) return false;
  const last = got[expected.length - 1] as { data?: Buffer };
  const want = expected[expected.length - 1] as { data?: Buffer };
  return (last.data?.length ?? 0) >= (want.data?.length ?? 0);
}

/** The first error a stream fails with. */
function failure(stream: PacketStream): Promise<Error> {
  return new Promise((resolve) => stream.once('error', resolve));
}

let ws: Workspace;
let agent: { cert: string; key: string };
test.before(async () => {
  ws = await workspace();
  agent = await localAgentCertificate(ws.dir, 'c1');
});
test.after.always(() => ws?.cleanup());

function agentTls() {
  return { ca: readFileSync(ws.pki.caCert), cert: readFileSync(agent.cert), key: readFileSync(agent.key) };
}

test('our gRPC client and a grpc-js server (a reference-style one): metadata, packets both ways, statuses', async (t) => {
  const server = new grpc.Server();
  server.addService(agentServiceDefinition, {
    Connect: (call: grpc.ServerDuplexStream<KnownPacket, KnownPacket>) => {
      const id = String(call.metadata.get('agentid')[0]);
      if (id === 'refuse-me') {
        call.emit('error', { code: grpc.status.PERMISSION_DENIED, details: 'not you, 100%' });
        return;
      }
      const headers = new grpc.Metadata();
      headers.set('serverid', 'ref-1');
      call.sendMetadata(headers);
      call.on('data', (p: KnownPacket) => {
        if (p.type === PacketType.CLOSE_REQ) call.emit('error', { code: grpc.status.ABORTED, details: 'told to fail' });
        else call.write(p);
      });
      call.on('end', () => call.end());
    },
  });
  const { ca, cert, key } = { ca: readFileSync(ws.pki.caCert), cert: readFileSync(ws.pki.serverCert), key: readFileSync(ws.pki.serverKey) };
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0',
    grpc.ServerCredentials.createSsl(ca, [{ private_key: key, cert_chain: cert }], true), (err, p) => (err ? reject(err) : resolve(p))));
  const session = await connect({ target: `127.0.0.1:${port}`, tls: agentTls(), timeoutMs: 5_000 });
  try {
    const md = new Metadata();
    md.set('agentid', 'agent-1');
    const { stream, headers } = await openCall(session, AGENT_CONNECT_PATH, md, 5_000);
    t.deepEqual(headers.get('serverid'), ['ref-1']);
    const sent = SAMPLE.filter((p) => p.type !== PacketType.CLOSE_REQ);
    const expected = joinData(sent);
    const failed = failure(stream);
    for (const p of sent) stream.write(p);
    const echoed = await readUntil(stream, (got) => isComplete(joinData(got), expected));
    t.deepEqual(joinData(echoed), expected, 'every packet came back, DATA byte for byte');

    stream.write(closeRequest(9n));
    const err = await failed;
    t.true(err instanceof GrpcCallError);
    t.is((err as GrpcCallError).code, grpc.status.ABORTED, 'a status after the headers fails the stream with it');
    t.is((err as GrpcCallError).details, 'told to fail');

    const refused = new Metadata();
    refused.set('agentid', 'refuse-me');
    const refusal = await t.throwsAsync(openCall(session, AGENT_CONNECT_PATH, refused, 5_000), { instanceOf: GrpcCallError });
    t.is(refusal?.code, grpc.status.PERMISSION_DENIED);
    t.is(refusal?.details, 'not you, 100%', 'the refusal\'s message, percent-decoded');
  } finally {
    session.destroy();
    server.forceShutdown();
  }
});
test('flow control is on only when both ends announce a window', (t) => {
  const announced = new grpc.Metadata();
  announceFlowControl(announced, 4 << 20);
  t.is(peerWindow(announced), 1 << 20, 'a connection starts at a quarter of the most it may hold');
  t.deepEqual(negotiateFlowControl(announced, 8 << 20), { sendWindow: 1 << 20, receiveWindow: 2 << 20 });
  t.is(negotiateFlowControl(new grpc.Metadata(), 4 << 20), undefined, 'a reference peer announces nothing');
  t.is(negotiateFlowControl(announced, undefined), undefined, 'switched off on this end');
  const silly = new grpc.Metadata();
  silly.set('tke-flow-control', 'window=12');
  t.is(peerWindow(silly), undefined, 'a window too small to be useful is refused');
});

/** An echo of packets on our gRPC server, as the agent listener and the frontend use it. */
function echoServer(options: ConstructorParameters<typeof GrpcServer>[0]): GrpcServer {
  const server = new GrpcServer(options);
  server.handle(PROXY_PATH, (call: ServerCall) => {
    if (call.metadata.get('fail').length > 0) {
      call.sendStatus(GrpcStatus.INVALID_ARGUMENT, `refused: ${call.metadata.get('fail').join('+')}`);
      return;
    }
    const headers = new Metadata();
    headers.set('echo-of', call.metadata.get('who').join(','));
    call.sendMetadata(headers);
    const packets = call.packets;
    packets.on('data', (p: KnownPacket) => {
      if (!packets.write(p)) packets.pause();
    });
    packets.on('drain', () => packets.resume());
    packets.on('end', () => packets.end());
    packets.on('error', () => undefined);
  });
  return server;
}

test('a grpc-js client and our gRPC server: metadata, packets both ways, statuses, unknown methods', async (t) => {
  const server = echoServer({ log });
  const port = await server.listen({ host: '127.0.0.1', port: 0 });
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  try {
    const md = new grpc.Metadata();
    md.add('who', 'a');
    md.add('who', 'b');
    const call = client.makeBidiStreamRequest(PROXY_PATH, framePacketBody, decodeBody, md);
    const headers = await new Promise<grpc.Metadata>((resolve) => call.once('metadata', resolve));
    t.deepEqual(headers.get('echo-of'), ['a,b'], 'a repeated request key reaches the handler as two values');
    const echoed: Packet[] = [];
    call.on('error', () => undefined); // the status says how it ended
    const ended = new Promise<grpc.StatusObject>((resolve) => call.once('status', resolve));
    call.on('data', (p: Packet) => echoed.push(p));
    for (const p of SAMPLE) call.write(p);
    call.end();
    const status = await ended;
    t.is(status.code, grpc.status.OK);
    t.deepEqual(joinData(echoed), joinData(SAMPLE), 'every packet came back');

    const failing = new grpc.Metadata();
    failing.set('fail', 'yes');
    const refused = client.makeBidiStreamRequest(PROXY_PATH, framePacketBody, decodeBody, failing);
    refused.on('error', () => undefined);
    const refusal = await new Promise<grpc.StatusObject>((resolve) => refused.once('status', resolve));
    t.is(refusal.code, grpc.status.INVALID_ARGUMENT);
    t.is(refusal.details, 'refused: yes');

    const unknown = client.makeBidiStreamRequest('/NoSuch/Method', framePacketBody, decodeBody, new grpc.Metadata());
    unknown.on('error', () => undefined);
    const none = await new Promise<grpc.StatusObject>((resolve) => unknown.once('status', resolve));
    t.is(none.code, grpc.status.UNIMPLEMENTED);
    t.regex(none.details, /unknown method \/NoSuch\/Method/);
  } finally {
    client.close();
    server.close();
  }
});

test('bulk in both directions at once over a raised listener does not deadlock', async (t) => {
  // With large windows both ways, Node HTTP/2 sessions that both block in a write stop
  // reading and never recover; the client keeps its receive window small to prevent it.
  const server = echoServer({ tls: await localPkiTlsSource(ws.pki, 'server'), receiveWindow: AGENT_LISTENER_WINDOW, log });
  const port = await server.listen({ host: '127.0.0.1', port: 0 });
  const session = await connect({ target: `127.0.0.1:${port}`, tls: agentTls(), timeoutMs: 5_000 });
  try {
    const { stream } = await openCall(session, PROXY_PATH, new Metadata(), 5_000);
    const total = 48 * 1024 * 1024;
    const chunk = Buffer.alloc(32 * 1024, 7);
    let received = 0;
    const done = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 30_000);
      stream.on('data', (p: Packet) => {
        received += (p as { data: Uint8Array }).data.length;
        if (received >= total) { clearTimeout(timer); resolve(true); }
      });
    });
    let sent = 0;
    const pump = () => {
      while (sent < total) {
        sent += chunk.length;
        if (!stream.write(dataPacket(1n, chunk))) { stream.once('drain', pump); return; }
      }
    };
    pump();
    t.true(await done, `echoed ${received} of ${total} bytes`);
  } finally {
    session.destroy();
    server.close();
  }
});

test('a packet stream lets a little queue in the HTTP/2 stream before it waits, and no more', async (t) => {
  // An HTTP/2 stream that never finishes a write, as under a peer that stopped reading.
  const h2 = new Duplex({ read() {}, write(_chunk, _encoding, _callback) { /* never done */ } });
  const stream = new GrpcPacketStream(h2 as unknown as http2.Http2Stream, { end: () => undefined, abort: () => undefined }, 4 << 20);
  const payload = Buffer.alloc(32 * 1024, 1);
  let accepted = 0;
  while (stream.write(dataPacket(1n, payload))) accepted++;
  await new Promise((resolve) => setImmediate(resolve));
  t.true(h2.writableLength > 64 * 1024, `more than Node's 16 KiB mark is handed to HTTP/2 (${h2.writableLength} bytes)`);
  t.true(h2.writableLength <= 256 * 1024 + 64 * 1024, `and then the writer waits (${h2.writableLength} bytes queued)`);
  t.true(accepted < 32, `the packet stream pushed back after ${accepted} packets`);
  stream.destroy();
});

test('a batch of DATA packets of one connection goes out as one gRPC message, written from where the payloads lie', async (t) => {
  const written: Buffer[] = [];
  const h2 = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) { written.push(chunk); callback(); },
    writev(chunks, callback) { for (const c of chunks) written.push(c.chunk as Buffer); callback(); },
  });
  const stream = new GrpcPacketStream(h2 as unknown as http2.Http2Stream, { end: () => undefined, abort: () => undefined }, 4 << 20);
  const pieces = [Buffer.alloc(20_000, 1), Buffer.alloc(3, 2), Buffer.alloc(16_000, 3)];
  const batch: KnownPacket[] = [
    ...pieces.map((piece) => dataPacket(7n, piece)),
    closeRequest(5n),
    dataPacket(8n, Buffer.from('other')),
    { type: PacketType.DATA, connectID: 8n, data: Buffer.from('with an error'), error: 'e' },
    dataPacket(7n, Buffer.alloc(2_000, 4)),
  ];
  stream.cork();
  for (const packet of batch) stream.write(packet);
  stream.uncork();
  await new Promise((resolve) => setImmediate(resolve));

  const got: Packet[] = [];
  const reader = new GrpcMessageReader(4 << 20);
  reader.push(Buffer.concat(written), (p) => got.push(p));
  t.deepEqual(got.map((p) => [p.type, (p as { connectID?: bigint }).connectID, (p as { data?: Uint8Array }).data?.length]), [
    [PacketType.DATA, 7n, 36_003],
    [PacketType.CLOSE_REQ, 5n, undefined],
    [PacketType.DATA, 8n, 5],
    [PacketType.DATA, 8n, 13],
    [PacketType.DATA, 7n, 2_000],
  ], 'the run of connection 7 is one packet; a control packet, another connection or an error ends a run');
  t.deepEqual(Buffer.from((got[0] as { data: Uint8Array }).data), Buffer.concat(pieces));
  t.true(pieces.every((piece) => written.includes(piece)), 'the payloads themselves are written, not copies');

  // However much queued, a joined message stays within one DATA packet's default size.
  written.length = 0;
  stream.cork();
  for (let i = 0; i < 6; i++) stream.write(dataPacket(9n, Buffer.alloc(100 * 1024, i)));
  stream.uncork();
  await new Promise((resolve) => setImmediate(resolve));
  const sizes: number[] = [];
  new GrpcMessageReader(4 << 20).push(Buffer.concat(written), (p) => sizes.push((p as { data: Uint8Array }).data.length));
  t.deepEqual(sizes, [200 * 1024, 200 * 1024, 200 * 1024]);
  stream.destroy();
});

test('connectTls checks the server name on the short certificate, then gives Node\'s detailed one back', async (t) => {
  const server = tls.createServer({
    key: readFileSync(ws.pki.serverKey), cert: readFileSync(ws.pki.serverCert), ca: readFileSync(ws.pki.caCert), requestCert: true,
  }, (socket) => socket.on('error', () => undefined));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const sockets: tls.TLSSocket[] = [];
  try {
    const checked: tls.PeerCertificate[] = [];
    const socket = connectTls({
      ...agentTls(), host: '127.0.0.1', port, servername: 'localhost',
      checkServerIdentity: (host, cert) => { checked.push(cert); return tls.checkServerIdentity(host, cert); },
    });
    sockets.push(socket);
    await once(socket, 'secureConnect');
    t.is(checked.length, 1);
    t.false('issuerCertificate' in checked[0], 'the check got the short form, without the chain');
    t.regex(checked[0].subjectaltname ?? '', /DNS:localhost/);
    t.truthy(socket.getPeerCertificate(true).issuerCertificate, 'afterwards the detailed form again');

    const wrong = connectTls({ ...agentTls(), host: '127.0.0.1', port, servername: 'not-the-server.example' });
    sockets.push(wrong);
    const [err] = await once(wrong, 'error') as [NodeJS.ErrnoException];
    t.is(err.code, 'ERR_TLS_CERT_ALTNAME_INVALID', 'a name the certificate does not carry is still refused');
  } finally {
    for (const s of sockets) s.destroy();
    server.close();
  }
});

test('a TLS listener takes its source\'s new certificate for new handshakes, and open streams carry on', async (t) => {
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-reload-'));
  const ca = createCa('reload CA');
  const issue = () => issueCertificate(ca, { commonName: 'tunnel-server', dnsNames: ['localhost'], ips: ['127.0.0.1'], usage: 'both' });
  const files = { key: join(dir, 'server.key'), cert: join(dir, 'server.crt'), ca: join(dir, 'ca.crt') };
  const write = (pair: { certPem: string; keyPem: string }) => {
    // As a certificate manager replaces files: whole, by rename.
    writeFileSync(`${files.key}.new`, pair.keyPem, { mode: 0o600 });
    writeFileSync(`${files.cert}.new`, pair.certPem);
    renameSync(`${files.key}.new`, files.key);
    renameSync(`${files.cert}.new`, files.cert);
  };
  const first = issue();
  write(first);
  writeFileSync(files.ca, ca.certPem);
  const source = await FileTlsSource.load({ ...files, role: 'test listener' }, { watchIntervalMs: 20 });
  const server = echoServer({ log, tls: source });
  const port = await server.listen({ host: '127.0.0.1', port: 0 });
  const client = issueCertificate(ca, { commonName: 'tunnel-client', usage: 'client' });
  const clientTls = { ca: Buffer.from(ca.certPem), cert: Buffer.from(client.certPem), key: Buffer.from(client.keyPem) };
  const servedSerial = async () => {
    const socket = connectTls({ host: '127.0.0.1', port, ...clientTls, servername: 'localhost', ALPNProtocols: ['h2'] });
    await once(socket, 'secureConnect');
    const serial = socket.getPeerX509Certificate()!.serialNumber;
    socket.destroy();
    return serial;
  };
  try {
    t.is(await servedSerial(), certificateSerial(first.certPem));
    const session = await connect({ target: `127.0.0.1:${port}`, tls: clientTls, timeoutMs: 5_000 });
    const { stream } = await openCall(session, PROXY_PATH, new Metadata(), 5_000);
    const second = issue();
    const swapped = new Promise((resolve) => source.changes.subscribe(resolve));
    write(second);
    await swapped;
    t.is(await servedSerial(), certificateSerial(second.certPem), 'a new handshake gets the new certificate');
    stream.write(dataPacket(1n, Buffer.from('still open')));
    const [echoed] = await readUntil(stream, (got) => got.length >= 1);
    t.like(echoed, { type: PacketType.DATA, connectID: 1n }, 'the stream opened before the swap still carries packets');
    stream.destroy();
    session.destroy();
  } finally {
    server.close();
    source.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('keepalive pings come at the interval asked for, and by default no more often than a grpc-go frontend allows', async (t) => {
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-ping-'));
  const path = join(dir, 'h2.sock');
  const pings: number[] = [];
  const server = http2.createServer();
  server.on('session', (session) => session.on('ping', () => pings.push(Date.now())));
  server.listen(path);
  await once(server, 'listening');
  try {
    const started = Date.now();
    const fast = await connect({ target: { uds: path }, timeoutMs: 5_000, keepaliveMs: 100 });
    // Pings keep coming. A loaded machine may delay one, sending or receiving, and the next
    // may then arrive soon after it; but the k-th ping is never sent, so never arrives,
    // before k intervals have passed since the connection started.
    const deadline = Date.now() + 10_000;
    while (pings.length < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    fast.destroy();
    t.true(pings.length >= 4, `${pings.length} pings in 10 s at 100 ms`);
    const since = pings.map((at) => at - started);
    t.true(since.every((ms, k) => ms >= (k + 1) * 100 - 5), `pings at ${since.join(', ')} ms after the start`);
    pings.length = 0;
    const plain = await connect({ target: { uds: path }, timeoutMs: 5_000 });
    await new Promise((r) => setTimeout(r, 400));
    plain.destroy();
    t.is(pings.length, 0, 'a frontend client pings at most every 5.5 minutes');
    t.true(KEEPALIVE.frontendMs >= 5 * 60_000 && KEEPALIVE.agentMs >= 2 * 30_000);
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an HTTP/2 connection that holds more than its session memory gets its new calls refused; other connections are served', async (t) => {
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-h2-'));
  const path = join(dir, 'grpc.sock');
  const server = new GrpcServer({ log, maxSessionMemoryMiB: 1 });
  // Each call queues 1 MiB for a client that reads none of it.
  server.handle(PROXY_PATH, (call: ServerCall) => {
    call.sendMetadata(new Metadata());
    call.packets.on('error', () => {});
    call.packets.write(dataPacket(1n, Buffer.alloc(1024 * 1024, 1)));
  });
  await server.listen({ path });
  const sessions: http2.ClientHttp2Session[] = [];
  const open = () => {
    const session = http2.connect('http://localhost', { createConnection: () => net.connect(path), settings: { initialWindowSize: 65_535 } });
    session.on('error', () => {});
    sessions.push(session);
    return session;
  };
  /** Opens a call that reads nothing: its response status, or the code it was reset with. */
  const call = (session: http2.ClientHttp2Session) => new Promise<string>((resolve) => {
    const stream = session.request({ ':method': 'POST', ':path': PROXY_PATH, 'content-type': 'application/grpc', te: 'trailers' });
    stream.on('error', () => {});
    stream.pause();
    stream.once('response', (h) => resolve(`status ${String(h[':status'])}`));
    stream.once('close', () => resolve(`reset ${stream.rstCode}`));
  });
  try {
    const greedy = open();
    const answers: string[] = [];
    for (let i = 0; i < 8; i++) {
      answers.push(await call(greedy));
      await new Promise((r) => setTimeout(r, 50)); // the server queues the call's data
    }
    t.is(answers[0], 'status 200');
    const refused = answers.indexOf(`reset ${http2.constants.NGHTTP2_ENHANCE_YOUR_CALM}`);
    t.true(refused > 0, `a call past the connection's memory is refused: ${answers.join(', ')}`);
    t.true(answers.slice(refused).every((a) => a === answers[refused]), `and every later one: ${answers.join(', ')}`);
    t.is(await call(open()), 'status 200', 'a call on another connection is served');
  } finally {
    for (const s of sessions) s.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
