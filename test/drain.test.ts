/**
 * Graceful shutdown. A server on SIGTERM refuses new clients, fails /readyz, sends DRAIN to
 * its agents and lets open connections finish (bounded by --drain-timeout); an agent on
 * SIGTERM sends DRAIN, so the server routes new dials to another agent of the cluster, and
 * finishes its open connections; an agent whose server drains finds it again once it is
 * back. A refused agent stream carries the serverid header before its status, as the
 * reference agent expects. A start that fails part way closes the listeners it opened.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import type { Duplex } from 'node:stream';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { dialGrpc } from '../lib/client/grpc-dialer.js';
import { FileTlsSource, localPkiTlsSource } from '../lib/pki/tls-source.js';
import { TunnelServer } from '../lib/server/tunnel-server.js';
import { DialError } from '../lib/mux/dialing-mux.js';
import { GrpcCallError, connect, openCall } from '../lib/transport/grpc-client.js';
import { GrpcStatus, Metadata } from '../lib/transport/grpc-metadata.js';
import { AGENT_CONNECT_PATH, MD_SERVER_ID } from '../lib/wire/protocol.js';
import { echoTarget, eventually, exchange, httpGet, metric, run, sha256, startAgent, startServer, unusedPort, workspace, type Workspace } from './helpers/system.js';

async function clientTls(ws: Workspace) {
  return FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
}

/**
 * Sends `size` random bytes over `socket` and checks that the same come back; the socket's
 * listeners are as before afterwards, so it can carry the next round.
 */
async function roundTrip(t: { is(a: unknown, b: unknown, m?: string): void }, socket: Duplex, size: number, what: string): Promise<void> {
  const payload = randomBytes(size);
  const before = new Set(socket.listeners('data'));
  const errorsBefore = new Set(socket.listeners('error'));
  try {
    t.is(await exchange(socket, payload, payload.length), sha256(payload), `${what}: ${size} bytes back intact`);
  } finally {
    for (const listener of socket.listeners('data')) if (!before.has(listener)) socket.off('data', listener as () => void);
    for (const listener of socket.listeners('error')) if (!errorsBefore.has(listener)) socket.off('error', listener as () => void);
  }
}

test.serial('a server on SIGTERM refuses new clients and fails /readyz, lets an open connection finish intact, then exits', async (t) => {
  const ws = await workspace();
  const target = await echoTarget();
  const server = await startServer(ws, ['--server-id=s1']);
  const agent = await startAgent(ws, server, 'cluster-a');
  try {
    const tls = await clientTls(ws);
    const proxy = { host: '127.0.0.1', port: server.connectPort, tls };
    const open = await dialHttpConnect(proxy, `cluster-a:${target.port}`);
    await roundTrip(t, open, 2 * 1024 * 1024, 'before SIGTERM');
    const grpcOpen = await dialGrpc({ uds: server.grpcUds }, `cluster-a:${target.port}`);
    await roundTrip(t, grpcOpen, 1024 * 1024, 'gRPC before SIGTERM');
    t.is((await httpGet(server.healthPort, '/readyz')).status, 200);

    const from = server.proc.output.length;
    server.proc.child.kill('SIGTERM');
    await server.proc.waitFor(/draining: refusing new clients and agent streams/, 10_000, from);
    t.regex(server.proc.output.slice(from), /openConnections=2 agentsTold=1/);
    await agent.proc.waitFor(/the tunnel server is shutting down: its open connections go on/);

    // New clients: the HTTP-CONNECT port is closed, the gRPC frontend answers UNAVAILABLE.
    const refused = await dialHttpConnect(proxy, `cluster-a:${target.port}`).then(() => undefined, (err: NodeJS.ErrnoException) => err);
    t.truthy(refused, 'a new CONNECT is refused');
    t.is(refused?.code ?? (refused?.cause as NodeJS.ErrnoException | undefined)?.code, 'ECONNREFUSED', refused?.message);
    const grpcRefused = await dialGrpc({ uds: server.grpcUds }, `cluster-a:${target.port}`).then(() => undefined, (err: Error) => err);
    t.true(grpcRefused instanceof DialError, String(grpcRefused));
    t.regex(String(grpcRefused?.message), /UNAVAILABLE.*shutting down/);
    const ready = await httpGet(server.healthPort, '/readyz');
    t.is(ready.status, 503);
    t.regex(ready.body, /shutting down/);

    // The open connections still carry bytes both ways.
    await roundTrip(t, open, 4 * 1024 * 1024, 'during the drain');
    await roundTrip(t, grpcOpen, 1024 * 1024, 'gRPC during the drain');
    t.is(server.proc.child.exitCode, null, 'the server waits for its open connections');
    open.destroy();
    grpcOpen.destroy();
    t.is(await server.proc.exited, 0);
    t.regex(server.proc.output.slice(from), /drained: every connection has finished/);
    t.notRegex(server.proc.output, /drain timeout/);
  } finally {
    await agent.stop();
    await server.stop();
    await target.close();
    ws.cleanup();
  }
});

test.serial('--drain-timeout bounds a server\'s drain: a connection still open then is closed, and the server exits', async (t) => {
  const ws = await workspace();
  const target = await echoTarget();
  const server = await startServer(ws, ['--drain-timeout=1s']);
  const agent = await startAgent(ws, server, 'cluster-a');
  try {
    const open = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls: await clientTls(ws) }, `cluster-a:${target.port}`);
    await roundTrip(t, open, 1024 * 1024, 'before SIGTERM');
    const closed = new Promise<void>((resolve) => open.once('close', () => resolve()));
    open.on('error', () => undefined);
    const from = server.proc.output.length;
    t.is(await server.stop(), 0);
    t.regex(server.proc.output.slice(from), /drain timeout: closing the connections still open openConnections=1 timeout=1000ms/);
    await closed;
    await eventually(() => target.open === 0, 10_000, 'the target\'s socket closes');
  } finally {
    await agent.stop();
    await server.stop();
    await target.close();
    ws.cleanup();
  }
});

test.serial('a second SIGTERM during a drain exits at once, with status 1', async (t) => {
  const ws = await workspace();
  const target = await echoTarget();
  const server = await startServer(ws);
  const agent = await startAgent(ws, server, 'cluster-a');
  try {
    const open = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls: await clientTls(ws) }, `cluster-a:${target.port}`);
    open.on('error', () => undefined);
    await roundTrip(t, open, 64 * 1024, 'before SIGTERM');
    server.proc.child.kill('SIGTERM');
    await server.proc.waitFor(/draining: refusing new clients/);
    t.is(await server.stop(), 1);
    t.notRegex(server.proc.output, /drained: every connection has finished|drain timeout/, 'it did not wait for the open connection');
    open.destroy();
  } finally {
    await agent.stop();
    await server.stop();
    await target.close();
    ws.cleanup();
  }
});

test.serial('an agent on SIGTERM sends DRAIN: new dials go to the cluster\'s other agent, its open connection finishes, then it exits', async (t) => {
  const ws = await workspace();
  const target = await echoTarget();
  const server = await startServer(ws);
  const first = await startAgent(ws, server, 'cluster-a', ['--agent-id=first']);
  const second = await startAgent(ws, server, 'cluster-a', ['--agent-id=second']);
  try {
    const proxy = { host: '127.0.0.1', port: server.connectPort, tls: await clientTls(ws) };
    // Open connections until one goes through the first agent (dials pick an agent at random).
    const held: net.Socket[] = [];
    let throughFirst: net.Socket | undefined;
    while (!throughFirst) {
      const before = await metric(first.healthPort, 'konnectivity_network_proxy_agent_open_endpoint_connections');
      const socket = await dialHttpConnect(proxy, `cluster-a:${target.port}`);
      await roundTrip(t, socket, 64 * 1024, 'a connection');
      if (await metric(first.healthPort, 'konnectivity_network_proxy_agent_open_endpoint_connections') > before) throughFirst = socket;
      else held.push(socket);
    }
    for (const socket of held) socket.destroy();

    const from = server.proc.output.length;
    first.proc.child.kill('SIGTERM');
    await first.proc.waitFor(/draining: the servers route no new dials here/);
    await server.proc.waitFor(/agent is draining: no new dials go to it agentID=first/, 10_000, from);
    const fresh: net.Socket[] = [];
    for (let i = 0; i < 10; i++) {
      const socket = await dialHttpConnect(proxy, `cluster-a:${target.port}`);
      await roundTrip(t, socket, 256 * 1024, `new connection ${i}`);
      fresh.push(socket);
    }
    t.is(await metric(second.healthPort, 'konnectivity_network_proxy_agent_open_endpoint_connections'), 10, 'every new dial went to the agent that is not draining');
    await roundTrip(t, throughFirst, 2 * 1024 * 1024, 'the draining agent\'s connection');
    t.is(first.proc.child.exitCode, null, 'the agent waits for its open connection');
    throughFirst.destroy();
    t.is(await first.proc.exited, 0);
    t.regex(first.proc.output, /drained: every connection has finished/);
    for (const socket of fresh) socket.destroy();
  } finally {
    await first.stop();
    await second.stop();
    await server.stop();
    await target.close();
    ws.cleanup();
  }
});

test.serial('an agent on two servers (--proxy-server-host repeated) keeps its connection through a draining one and reconnects once it is back', async (t) => {
  const ws = await workspace();
  const target = await echoTarget();
  const portOne = await unusedPort();
  let one = await startServer(ws, [`--agent-port=${portOne}`, '--server-id=one'], 'one');
  const two = await startServer(ws, ['--server-id=two'], 'two');
  const agent = run('tunnel-agent', [
    `--state-dir=${ws.dir}`, '--cluster-name=cluster-a', '--host-alias=cluster-a=127.0.0.1', '--health-port=off',
    `--proxy-server-host=127.0.0.1:${portOne}`, `--proxy-server-host=127.0.0.1:${two.agentPort}`,
  ]);
  try {
    await agent.waitFor(/connected to tunnel server serverID=one/);
    await agent.waitFor(/connected to tunnel server serverID=two/);
    const tls = await clientTls(ws);
    const throughOne = await dialHttpConnect({ host: '127.0.0.1', port: one.connectPort, tls }, `cluster-a:${target.port}`);
    await roundTrip(t, throughOne, 1024 * 1024, 'through server one');

    const from = agent.output.length;
    one.proc.child.kill('SIGTERM');
    await agent.waitFor(/the tunnel server is shutting down: its open connections go on, new streams go to other servers serverID=one/, 10_000, from);
    await roundTrip(t, throughOne, 2 * 1024 * 1024, 'through server one while it drains');
    const throughTwo = await dialHttpConnect({ host: '127.0.0.1', port: two.connectPort, tls }, `cluster-a:${target.port}`);
    await roundTrip(t, throughTwo, 1024 * 1024, 'through server two');
    throughOne.destroy();
    t.is(await one.proc.exited, 0);
    await agent.waitFor(/lost the stream to the tunnel server; reconnecting serverID=one/, 10_000, from);

    one = await startServer(ws, [`--agent-port=${portOne}`, '--server-id=one'], 'one');
    await agent.waitFor(/connected to tunnel server serverID=one/, 20_000, from);
    const again = await dialHttpConnect({ host: '127.0.0.1', port: one.connectPort, tls }, `cluster-a:${target.port}`);
    await roundTrip(t, again, 1024 * 1024, 'through server one after its restart');
    await roundTrip(t, throughTwo, 1024 * 1024, 'through server two, all along');
    again.destroy();
    throughTwo.destroy();
  } finally {
    await agent.stop();
    await one.stop();
    await two.stop();
    await target.close();
    ws.cleanup();
  }
});

test.serial('a refused agent stream answers the serverid header before its status (what the reference agent reads first)', async (t) => {
  const ws = await workspace();
  const server = await startServer(ws, ['--server-id=s1']);
  try {
    const material = { ca: readFileSync(ws.pki.caCert), cert: readFileSync(ws.pki.clientCert), key: readFileSync(ws.pki.clientKey) };
    const session = await connect({ target: `127.0.0.1:${server.agentPort}`, tls: material, serverName: 'localhost', timeoutMs: 10_000 });
    try {
      // No agentid, as a misconfigured agent would send: the server refuses the stream.
      const { stream, headers } = await openCall(session, AGENT_CONNECT_PATH, new Metadata(), 10_000);
      t.deepEqual(headers.get(MD_SERVER_ID), ['s1']);
      const failure = await new Promise<Error>((resolve) => {
        stream.on('error', resolve);
        stream.resume();
      });
      t.true(failure instanceof GrpcCallError, String(failure));
      t.is((failure as GrpcCallError).code, GrpcStatus.INVALID_ARGUMENT);
      t.regex((failure as GrpcCallError).details, /expected one agentid/);
    } finally {
      session.destroy();
    }
  } finally {
    await server.stop();
    ws.cleanup();
  }
});

test.serial('a server whose start fails part way closes the listeners it had opened', async (t) => {
  const ws = await workspace();
  const taken = net.createServer();
  taken.listen(0, '127.0.0.1');
  await once(taken, 'listening');
  const agentPort = await unusedPort();
  const tls = await localPkiTlsSource(ws.pki, 'server');
  const server = new TunnelServer({
    bindAddress: '127.0.0.1', agentPort, serverPort: (taken.address() as net.AddressInfo).port,
    healthBindAddress: '127.0.0.1', tls, proxyStrategies: ['destHost'],
  });
  try {
    await t.throwsAsync(server.start(), { message: /cannot listen for HTTP-CONNECT clients on 127\.0\.0\.1:\d+: .*EADDRINUSE/ });
    const refused = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port: agentPort });
      socket.once('connect', () => { socket.destroy(); resolve(undefined); });
      socket.once('error', resolve);
    });
    t.is(refused?.code, 'ECONNREFUSED', 'the agent port it had opened is closed again');
  } finally {
    await server.stop();
    tls.close();
    taken.close();
    ws.cleanup();
  }
});
