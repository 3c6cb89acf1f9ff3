/**
 * Backpressure and head-of-line isolation through the real binaries: a stalled reader holds
 * at most its window and never stalls the other connections on the same agent stream.
 * Assertions are on bytes and completion, never on time.
 */
import test from 'ava';
import http2 from 'node:http2';
import net from 'node:net';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import {
  workspace, startServer, startAgent, echoTarget, eventually, metric, exchange, sha256,
  type Workspace, type ServerHandle, type AgentHandle, type Target,
} from './helpers/system.js';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { dialGrpc } from '../lib/client/grpc-dialer.js';
import { FileTlsSource, type TlsSource } from '../lib/pki/tls-source.js';
import { PROXY_SERVER_WINDOW } from '../lib/transport/http2-windows.js';

/** The most one connection may hold (--connection-window); it starts at a quarter of this. */
const WINDOW = 1024 * 1024;
/** What one stalled connection may hold in server or agent: its window plus a packet and socket buffers. */
const STALL_BOUND = WINDOW + 512 * 1024;

/** A target that streams bytes for as long as the connection is open ("source"), or never reads ("sink"). */
async function sourceAndSink(): Promise<{ source: number; sink: number; sent: () => number; dropSockets(): void; close(): void }> {
  const chunk = Buffer.alloc(64 * 1024, 0x5a);
  let sent = 0;
  const sockets = new Set<net.Socket>();
  const track = (s: net.Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)); s.on('error', () => s.destroy()); };
  const source = net.createServer((s) => {
    track(s);
    const pump = () => { while (!s.destroyed) { sent += chunk.length; if (!s.write(chunk)) { s.once('drain', pump); return; } } };
    pump();
  });
  const sink = net.createServer((s) => { track(s); s.pause(); });
  source.listen(0, '127.0.0.1');
  sink.listen(0, '127.0.0.1');
  await Promise.all([once(source, 'listening'), once(sink, 'listening')]);
  return {
    source: (source.address() as net.AddressInfo).port,
    sink: (sink.address() as net.AddressInfo).port,
    sent: () => sent,
    dropSockets: () => { for (const s of sockets) s.destroy(); },
    close: () => { for (const s of sockets) s.destroy(); source.close(); sink.close(); },
  };
}

interface Rig { ws: Workspace; server: ServerHandle; agent: AgentHandle; echo: Target; targets: Awaited<ReturnType<typeof sourceAndSink>>; tls: TlsSource }

async function rig(extra: string[] = []): Promise<Rig> {
  const ws = await workspace();
  const echo = await echoTarget();
  const targets = await sourceAndSink();
  const server = await startServer(ws, [`--connection-window=${WINDOW}`, ...extra]);
  const agent = await startAgent(ws, server, 'c1', [`--connection-window=${WINDOW}`, ...extra]);
  const tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
  return { ws, server, agent, echo, targets, tls };
}

async function teardown(r: Rig): Promise<void> {
  await r.agent.stop();
  await r.server.stop();
  await r.echo.close();
  r.targets.close();
  r.ws.cleanup();
}

const serverBuffered = (r: Rig) => metric(r.server.healthPort, 'konnectivity_network_proxy_server_buffered_bytes');
const agentBuffered = (r: Rig) => metric(r.agent.healthPort, 'konnectivity_network_proxy_agent_buffered_bytes');

function connect(r: Rig, port: number): Promise<net.Socket> {
  return dialHttpConnect({ host: '127.0.0.1', port: r.server.connectPort, tls: r.tls }, `c1:${port}`);
}

/** Ten echo transfers of 4 MiB each through the same agent; true when all came back intact. */
async function tenTransfers(r: Rig, via: 'http-connect' | 'grpc' = 'http-connect'): Promise<boolean> {
  const results = await Promise.all(Array.from({ length: 10 }, async () => {
    const payload = randomBytes(4 * 1024 * 1024);
    const socket = via === 'grpc' ? await dialGrpc({ uds: r.server.grpcUds }, `c1:${r.echo.port}`) : await connect(r, r.echo.port);
    const digest = await exchange(socket, payload, payload.length, 60_000);
    socket.destroy();
    return digest === sha256(payload);
  }));
  return results.every(Boolean);
}

test.serial('a fast source into a stalled HTTP-CONNECT client: server and agent hold one window, ten others complete meanwhile', async (t) => {
  const r = await rig();
  try {
    const stalled = await connect(r, r.targets.source);
    stalled.pause();
    // Let the source fill everything it may fill.
    await eventually(async () => await serverBuffered(r) + await agentBuffered(r) >= WINDOW / 8, 10_000, 'the stalled connection fills its window');
    t.true(await tenTransfers(r), 'the ten transfers beside the stalled connection all complete intact');
    t.true(await serverBuffered(r) <= STALL_BOUND, `server holds ${await serverBuffered(r)} bytes`);
    t.true(await agentBuffered(r) <= STALL_BOUND, `agent holds ${await agentBuffered(r)} bytes`);
    // The stalled connection is still stalled: once the tunnel holds its window and the kernel
    // buffers on the way are full (their size is the kernel's business), the source is stuck.
    const settled = r.targets.sent();
    await new Promise((resolve) => setTimeout(resolve, 500));
    const pushed = r.targets.sent() - settled;
    t.true(pushed <= 256 * 1024, `the source is held back: it pushed ${pushed} bytes in 500 ms`);
    t.false(stalled.destroyed);
    // Aborting it with data in flight frees its buffers and its window.
    stalled.destroy();
    await eventually(async () => await serverBuffered(r) === 0 && await agentBuffered(r) === 0
      && await metric(r.server.healthPort, 'konnectivity_network_proxy_server_established_connections') === 0, 10_000, 'buffers freed');
    t.pass();
  } finally {
    await teardown(r);
  }
});

test.serial('a fast HTTP-CONNECT writer into a target that never reads: memory stays bounded, others complete', async (t) => {
  const r = await rig();
  try {
    const writer = await connect(r, r.targets.sink);
    const chunk = Buffer.alloc(256 * 1024, 1);
    let written = 0;
    const pump = () => { while (!writer.destroyed && written < 256 * 1024 * 1024) { written += chunk.length; if (!writer.write(chunk)) { writer.once('drain', pump); return; } } };
    writer.on('error', () => undefined);
    pump();
    await eventually(async () => await serverBuffered(r) + await agentBuffered(r) >= WINDOW / 8, 10_000, 'the upload fills its window');
    t.true(await tenTransfers(r), 'the ten transfers complete');
    t.true(await serverBuffered(r) <= STALL_BOUND, `server holds ${await serverBuffered(r)} bytes`);
    t.true(await agentBuffered(r) <= STALL_BOUND, `agent holds ${await agentBuffered(r)} bytes`);
    t.true(written < 64 * 1024 * 1024, `the writer was held back after ${written} bytes`);
    // The stalled upload cannot flush into a target that never reads, and a paused socket
    // does not see its peer leave; the connection ends when the target goes away.
    writer.destroy();
    r.targets.dropSockets();
    await eventually(async () => await serverBuffered(r) === 0 && await agentBuffered(r) === 0
      && await metric(r.agent.healthPort, 'konnectivity_network_proxy_agent_open_endpoint_connections') === 0
      && await metric(r.server.healthPort, 'konnectivity_network_proxy_server_established_connections') === 0, 20_000, 'buffers freed');
  } finally {
    await teardown(r);
  }
});

test.serial('a stalled gRPC client holds one window and does not stall the other connections', async (t) => {
  const r = await rig();
  try {
    const stalled = await dialGrpc({ uds: r.server.grpcUds }, `c1:${r.targets.source}`);
    stalled.pause();
    await eventually(async () => await serverBuffered(r) >= WINDOW / 8, 10_000, 'the stalled connection fills its window');
    t.true(await tenTransfers(r, 'grpc'), 'ten gRPC transfers complete');
    t.true(await tenTransfers(r, 'http-connect'), 'ten HTTP-CONNECT transfers complete');
    // Server side: the agent's side of the connection plus the frontend's; each holds at most a window.
    t.true(await serverBuffered(r) <= 2 * STALL_BOUND, `server holds ${await serverBuffered(r)} bytes`);
    t.true(await agentBuffered(r) <= STALL_BOUND, `agent holds ${await agentBuffered(r)} bytes`);
    stalled.destroy();
    await eventually(async () => await serverBuffered(r) === 0 && await agentBuffered(r) === 0, 10_000, 'buffers freed');
  } finally {
    await teardown(r);
  }
});

test.serial('a reference-style peer (no flow-control metadata, one stream) gets correct data, and a stalled reader stays bounded', async (t) => {
  // With the extensions off on both ends, the stream carries the plain protocol.
  const r = await rig(['--connection-window=0', '--single-stream']);
  t.regex(r.agent.proc.output, /flowControl=off streams=single/);
  try {
    t.true(await tenTransfers(r), 'ten transfers intact over the plain protocol');
    const stalled = await connect(r, r.targets.source);
    stalled.pause();
    // The source fills what the path may hold (kernel socket buffers, which autotune; the
    // HTTP/2 window; the paused connection's buffer), then stops.
    await eventually(async () => {
      const before = r.targets.sent();
      await new Promise((resolve) => setTimeout(resolve, 300));
      return before > 0 && r.targets.sent() === before;
    }, 20_000, 'the stalled connection stops the source')
      .catch(async (err: Error) => {
        throw new Error(`${err.message}: server ${await serverBuffered(r)}, agent ${await agentBuffered(r)}, source sent ${r.targets.sent()}, `
          + `established ${await metric(r.server.healthPort, 'konnectivity_network_proxy_server_established_connections')}\n${r.agent.proc.output.slice(-2000)}`);
      });
    const sentThen = r.targets.sent();
    await new Promise((resolve) => setTimeout(resolve, 500));
    // Without credits the server pauses the agent's stream instead of buffering without bound.
    t.true(await serverBuffered(r) <= 4 * 1024 * 1024, `server holds ${await serverBuffered(r)} bytes`);
    const pushed = r.targets.sent() - sentThen;
    t.true(pushed <= 256 * 1024, `the source is held back: it pushed ${pushed} bytes in 500 ms`);
    stalled.destroy();
  } finally {
    await teardown(r);
  }
});

test.serial('the gRPC frontend takes uploads in its raised window, and bulk both ways at once through it completes', async (t) => {
  const r = await rig();
  const session = http2.connect('http://localhost', { createConnection: () => net.connect(r.server.grpcUds) });
  session.on('error', () => undefined);
  try {
    const [settings] = await once(session, 'remoteSettings') as [http2.Settings];
    t.is(settings.initialWindowSize, PROXY_SERVER_WINDOW, 'the stream window, in the settings');
    await eventually(() => session.state.remoteWindowSize === PROXY_SERVER_WINDOW, 5_000, 'the connection window, in a WINDOW_UPDATE');
    // The echo sends everything back while the upload is still going: the server writes to
    // a client that is itself writing, each with data in flight, which would deadlock two
    // Node HTTP/2 sessions if the client could have more in flight than the kernel holds.
    const payload = randomBytes(64 * 1024 * 1024);
    const socket = await dialGrpc({ uds: r.server.grpcUds }, `c1:${r.echo.port}`);
    t.is(await exchange(socket, payload, payload.length, 60_000), sha256(payload));
    socket.destroy();
  } finally {
    session.destroy();
    await teardown(r);
  }
});
