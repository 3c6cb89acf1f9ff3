/**
 * The fast ways to open tunneled connections: TLS session resumption on the HTTP-CONNECT
 * port (tunnel-server --tls-resumption, and the client library offering its last session),
 * and the gRPC channel that opens every connection as a stream of one kept connection.
 */
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { Subject } from 'rxjs';
import { createMtlsConnectServer } from '../lib/server/http-connect-frontend.js';
import { issueCertificate } from '../lib/pki/certificates.js';
import { CLIENT_ORGANIZATION } from '../lib/pki/identities.js';
import { logger } from '../lib/observe/log.js';
import type { TlsSource } from '../lib/pki/tls-source.js';
import { dialHttpConnect, type HttpConnectProxy } from '../lib/client/http-connect-dialer.js';
import { GrpcChannel, type GrpcChannelOptions } from '../lib/client/grpc-channel.js';
import { DialError } from '../lib/mux/dialing-mux.js';
import type { TunnelConnection } from '../lib/mux/tunnel-connection.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';
import { echoTarget, echoed, eventually, exchange, metric, sha256, startAgent, startServer, workspace, type ServerHandle, type Workspace } from './helpers/system.js';

const clientTls = (ws: Workspace) => FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });

/** Dials, moves `size` random bytes through an echo and back, closes; returns the digests. */
async function echoThrough(open: () => Promise<NodeJS.ReadWriteStream & { end(): unknown; destroy(): unknown }>, size: number): Promise<{ sent: string; received: string }> {
  const socket = await open();
  const payload = randomBytes(size);
  try {
    return { sent: sha256(payload), received: await exchange(socket, payload, payload.length) };
  } finally {
    socket.destroy();
  }
}

const handshakes = (healthPort: number, resumed: boolean) =>
  metric(healthPort, `konnectivity_network_proxy_server_http_connect_tls_handshakes_total{resumed="${resumed}"}`).catch(() => 0);

test('with --tls-resumption a client that offers a session resumes it; without, every handshake is full', async (t) => {
  const ws = await workspace();
  const resuming = await startServer(ws, ['--tls-resumption'], 'resuming');
  const plain = await startServer(ws, [], 'plain');
  const target = await echoTarget();
  const agents = [await startAgent(ws, resuming, 'cluster-a'), await startAgent(ws, plain, 'cluster-a')];
  try {
    const tls = await clientTls(ws);
    for (const [server, resumes] of [[resuming, true], [plain, false]] as const) {
      const proxy: HttpConnectProxy = { host: '127.0.0.1', port: server.connectPort, tls, resumeSessions: true };
      for (let i = 0; i < 5; i++) {
        const { sent, received } = await echoThrough(() => dialHttpConnect(proxy, `cluster-a:${target.port}`), 64 * 1024);
        t.is(received, sent);
      }
      // The first handshake is full; the others resume where the server allows it.
      await eventually(async () => (await handshakes(server.healthPort, false)) + (await handshakes(server.healthPort, true)) === 5, 5_000, 'five handshakes counted');
      t.is(await handshakes(server.healthPort, true), resumes ? 4 : 0);
      t.is(await handshakes(server.healthPort, false), resumes ? 1 : 5);
    }
    // A client that offers no sessions makes full handshakes even where they resume.
    const before = await handshakes(resuming.healthPort, false);
    const { sent, received } = await echoThrough(() => dialHttpConnect({ host: '127.0.0.1', port: resuming.connectPort, tls, resumeSessions: false }, `cluster-a:${target.port}`), 1024);
    t.is(received, sent);
    await eventually(async () => (await handshakes(resuming.healthPort, false)) === before + 1, 5_000, 'a full handshake');
    tls.close();
  } finally {
    await Promise.all(agents.map((a) => a.stop()));
    await Promise.all([resuming.stop(), plain.stop()]);
    await target.close();
    ws.cleanup();
  }
});

test('a gRPC channel opens every tunneled connection on one kept connection, many at once, and reconnects after the server restarts', async (t) => {
  const ws = await workspace();
  let server = await startServer(ws);
  const target = await echoTarget();
  let agent = await startAgent(ws, server, 'cluster-a');
  const channel = new GrpcChannel({ uds: server.grpcUds });
  try {
    // 40 connections at once, then 40 one after the other, each with its own bytes.
    const results = await Promise.all(Array.from({ length: 40 }, () => echoThrough(() => channel.dial(`cluster-a:${target.port}`), 32 * 1024)));
    for (let i = 0; i < 40; i++) results.push(await echoThrough(() => channel.dial(`cluster-a:${target.port}`), 4 * 1024));
    for (const { sent, received } of results) t.is(received, sent);
    // All of them on one connection to the frontend.
    t.is(channel.connectionsOpened, 1);
    // A refused dial is the proxy's answer, and the channel stays usable.
    const refused = await t.throwsAsync(channel.dial(`no-such-cluster:${target.port}`));
    t.true(refused instanceof DialError, String(refused));
    const after = await echoThrough(() => channel.dial(`cluster-a:${target.port}`), 1024);
    t.is(after.received, after.sent);
    t.is(channel.connectionsOpened, 1);

    // The server goes away: the next dial after it is back opens a new connection.
    await agent.stop();
    await server.stop();
    await t.throwsAsync(channel.dial(`cluster-a:${target.port}`), { instanceOf: DialError });
    server = await startServer(ws);
    agent = await startAgent(ws, server, 'cluster-a');
    const again = await echoThrough(() => channel.dial(`cluster-a:${target.port}`), 256 * 1024);
    t.is(again.received, again.sent);
    t.is(channel.connectionsOpened, 2);
  } finally {
    channel.close();
    await agent.stop();
    await server.stop();
    await target.close();
    ws.cleanup();
  }
});

const proxyStreams = (healthPort: number) => metric(healthPort, 'konnectivity_network_proxy_server_grpc_connections{service_method="Proxy"}');
const established = (healthPort: number) => metric(healthPort, 'konnectivity_network_proxy_server_established_connections');

/** Opens `n` connections at once through `channel` and checks an echo on each; they stay open. */
async function openEchoed(t: ExecutionContext, channel: GrpcChannel, address: string, n: number): Promise<TunnelConnection[]> {
  const conns = await Promise.all(Array.from({ length: n }, () => channel.dial(address)));
  const intact = await Promise.all(conns.map((conn, i) => echoed(conn, 1024 + i * 997)));
  t.deepEqual(intact.map((ok, i) => (ok ? -1 : i)).filter((i) => i >= 0), [], 'every connection echoed its own bytes');
  return conns;
}

interface ChannelSetup {
  server: ServerHandle;
  channel: GrpcChannel;
  /** An echo target in cluster-a; `targetPort` is its port. */
  address: string;
  targetPort: number;
}

/**
 * A server, an agent for cluster-a with an echo target, and a GrpcChannel on the server's gRPC
 * socket whose first dial (a stream of its own, which learns whether the server takes many
 * dials on one) has been made and checked; `use` runs on that, and everything is stopped after.
 * `flags` go to both the server and the agent (flags they share, e.g. --connection-window).
 */
async function withChannel(t: ExecutionContext, flags: string[], channelOptions: GrpcChannelOptions, use: (setup: ChannelSetup) => Promise<void>): Promise<void> {
  const ws = await workspace();
  const server = await startServer(ws, flags);
  const target = await echoTarget();
  const agent = await startAgent(ws, server, 'cluster-a', flags);
  const channel = new GrpcChannel({ uds: server.grpcUds }, channelOptions);
  const address = `cluster-a:${target.port}`;
  try {
    const first = await echoThrough(() => channel.dial(address), 1024);
    t.is(first.received, first.sent);
    await eventually(async () => (await proxyStreams(server.healthPort)) === 0, 5_000, 'the first dial\'s stream closed');
    await use({ server, channel, address, targetPort: target.port });
  } finally {
    channel.close();
    await agent.stop();
    await server.stop();
    await target.close();
    ws.cleanup();
  }
}

test('on our server a gRPC channel carries its dials on one Proxy stream, and ends it when closed', (t) => withChannel(t, [], {}, async ({ server, channel, address, targetPort }) => {
  const conns = await openEchoed(t, channel, address, 40);
  t.is(await established(server.healthPort), 40);
  t.is(await proxyStreams(server.healthPort), 1, 'forty connections, one Proxy stream');
  for (const conn of conns) conn.destroy();
  await eventually(async () => (await established(server.healthPort)) === 0, 5_000, 'every connection closed on the server');
  t.is(await proxyStreams(server.healthPort), 1, 'the carrier stays for the next dials');

  // The carrier goes on carrying after its connections closed, and refusals do not end it.
  await t.throwsAsync(channel.dial(`no-such-cluster:${targetPort}`), { instanceOf: DialError, message: /No agent available/ });
  for (const conn of await openEchoed(t, channel, address, 5)) conn.destroy();
  t.is(await proxyStreams(server.healthPort), 1);
  t.is(channel.connectionsOpened, 1);

  channel.close();
  await eventually(async () => (await proxyStreams(server.healthPort)) === 0, 5_000, 'the carrier ended after the channel closed');
  t.is(await established(server.healthPort), 0);
}));

// A small window, so the stalled connection's echo stops early and holds little.
test('on the carrier stream a connection whose reader stalls holds back no other connection', (t) => withChannel(t, [], { flowControlWindow: 256 * 1024 }, async ({ server, channel, address }) => {
  const stalled = await channel.dial(address);
  stalled.pause();
  const payload = randomBytes(16 * 1024 * 1024);
  stalled.write(payload);
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  t.true(stalled.readableLength < payload.length / 4, `the stalled connection holds ${stalled.readableLength} bytes unread`);

  // Others on the same stream go on at once, in both directions.
  for (let i = 0; i < 3; i++) {
    const other = await echoThrough(() => channel.dial(address), 4 * 1024 * 1024);
    t.is(other.received, other.sent);
  }
  t.is(await proxyStreams(server.healthPort), 1, 'all of them on one Proxy stream');

  // The stalled one gets every byte once it reads again.
  const rest = exchange(stalled, Buffer.alloc(0), payload.length);
  stalled.resume();
  t.is(await rest, sha256(payload));
  stalled.destroy();
}));

test('a gRPC channel gives every dial its own Proxy stream on a server without the flow-control extension', (t) => withChannel(t, ['--connection-window=0'], {}, async ({ server, channel, address }) => {
  const conns = await openEchoed(t, channel, address, 10);
  t.is(await proxyStreams(server.healthPort), 10, 'a stream per dial, as the reference server takes them');
  for (const conn of conns) conn.destroy();
  await eventually(async () => (await proxyStreams(server.healthPort)) === 0, 5_000, 'every stream ended with its connection');
  t.is(channel.connectionsOpened, 1);
}));

/** The HTTP-CONNECT frontend alone, with resumption, on a TLS source whose changes the test makes. */
async function resumingFrontend(ws: Workspace) {
  const material = { key: readFileSync(ws.pki.serverKey), cert: readFileSync(ws.pki.serverCert), ca: readFileSync(ws.pki.caCert) };
  const changes = new Subject<typeof material>();
  const source: TlsSource = { current: () => material, changes, close: () => changes.complete() };
  const server = createMtlsConnectServer(source, {
    dial: () => Promise.reject(new Error('no agent here')),
    log: logger('test'),
    resumption: { lifetimeSeconds: 300 },
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port, renew: () => changes.next(material), ca: material.ca };
}

/** A TLS connection to `port` that offers `session`; resolves once the handshake is done. */
function connectWith(port: number, client: { key: Buffer | string; cert: Buffer | string; ca: Buffer }, session?: Buffer): Promise<{ socket: tls.TLSSocket; sessions: Buffer[] }> {
  const sessions: Buffer[] = [];
  const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ...client, session });
  socket.on('session', (s: Buffer) => sessions.push(s));
  return new Promise((resolve, reject) => {
    socket.once('secureConnect', () => resolve({ socket, sessions }));
    socket.once('error', reject);
  });
}

/** What the server answers a CONNECT with, up to its close. */
function answerTo(socket: tls.TLSSocket): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    socket.on('data', (d: Buffer) => { text += d.toString('latin1'); });
    socket.on('error', () => undefined);
    socket.on('close', () => resolve(text));
    socket.write('CONNECT cluster-a:443 HTTP/1.1\r\nHost: cluster-a:443\r\n\r\n');
  });
}

/** The session a full handshake to `port` leaves. */
async function firstSession(t: ExecutionContext, port: number, client: Parameters<typeof connectWith>[1]): Promise<Buffer> {
  const { socket, sessions } = await connectWith(port, client);
  t.false(socket.isSessionReused(), 'a first handshake is a full one');
  await eventually(() => sessions.length > 0, 5_000, 'a session ticket');
  socket.destroy();
  return sessions[sessions.length - 1];
}

test('sessions stop resuming when the TLS material changes, and one whose client certificate expired is refused', async (t) => {
  const ws = await workspace();
  const frontend = await resumingFrontend(ws);
  try {
    const client = { key: readFileSync(ws.pki.clientKey), cert: readFileSync(ws.pki.clientCert), ca: frontend.ca };
    const session = await firstSession(t, frontend.port, client);
    const resumed = await connectWith(frontend.port, client, session);
    t.true(resumed.socket.isSessionReused(), 'the session resumes');
    // A resumed session is a client like any other: its CONNECT is answered (here: no agent).
    t.regex(await answerTo(resumed.socket), /^HTTP\/1\.1 5\d\d /);

    frontend.renew();
    const after = await connectWith(frontend.port, client, session);
    t.false(after.socket.isSessionReused(), 'no session of before the change resumes');
    after.socket.destroy();

    // A client certificate that expires two seconds from now.
    const ca = { certPem: readFileSync(ws.pki.caCert, 'utf8'), keyPem: readFileSync(ws.pki.caKey, 'utf8') };
    const short = issueCertificate(ca, { commonName: 'short-lived', organization: [CLIENT_ORGANIZATION], usage: 'client', lifetimeSeconds: 2 });
    const shortClient = { key: short.keyPem, cert: short.certPem, ca: frontend.ca };
    const shortSession = await firstSession(t, frontend.port, shortClient);
    await new Promise((r) => setTimeout(r, 2_500));
    const late = await connectWith(frontend.port, shortClient, shortSession);
    t.true(late.socket.isSessionReused());
    const answer = await answerTo(late.socket);
    t.regex(answer, /^HTTP\/1\.1 403 /);
    t.regex(answer, /expired at .*full handshake/);
  } finally {
    frontend.server.close();
    ws.cleanup();
  }
});
