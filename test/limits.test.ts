/**
 * The server's dial limits, reached on purpose: open connections per client and per agent,
 * dials per second per client and per agent, and pending dials. Each refusal is clear (503
 * or 429 with the limit and the flag on HTTP-CONNECT, the same text in gRPC's DIAL_RSP),
 * counted and logged without a line per refused dial, and the connections already open keep
 * their bytes intact (length and sha256).
 */
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { dialHttpConnect, ProxyError } from '../lib/client/http-connect-dialer.js';
import { dialGrpc } from '../lib/client/grpc-dialer.js';
import { DialError } from '../lib/mux/dialing-mux.js';
import { FileTlsSource, type TlsSource } from '../lib/pki/tls-source.js';
import { issueFromLocalCa, localAgentCertificate } from '../lib/pki/local-pki.js';
import { AGENT_CONNECT_PATH, MD_AGENT_ID, MD_AGENT_IDENTIFIERS } from '../lib/wire/protocol.js';
import type { KnownPacket, Packet } from '../lib/wire/packet.js';
import { deserializePacket, serializePacket } from './helpers/grpc-services.js';
import {
  echoTarget, eventually, httpGet, metric, echoed, startAgent, startServer, workspace, type Workspace,
} from './helpers/system.js';

const SERVER = 'konnectivity_network_proxy_server';

type Stream = Duplex & { destroy(): unknown };

/** Checks every connection's echo at once. */
async function allIntact(connections: Stream[], size = 512 * 1024): Promise<boolean> {
  return (await Promise.all(connections.map((conn) => echoed(conn, size)))).every(Boolean);
}

function clientTls(ws: Workspace, cert = ws.pki.clientCert, key = ws.pki.clientKey): Promise<TlsSource> {
  return FileTlsSource.load({ ca: ws.pki.caCert, cert, key, role: 'test client' });
}

/** Refusals of one limit on one frontend, as the metric counts them. */
async function refusals(healthPort: number, frontend: string, reason: string): Promise<number> {
  const { body } = await httpGet(healthPort, '/metrics');
  const match = new RegExp(`${SERVER}_frontend_dials_refused_total\\{frontend="${frontend}",reason="${reason}"\\} (\\d+)`).exec(body);
  return match ? Number(match[1]) : 0;
}

/** An agent (with a real agent certificate) that registers for `host` and never answers a dial. */
async function silentAgent(ws: Workspace, agentPort: number, host: string): Promise<() => void> {
  const cert = await localAgentCertificate(ws.dir, host);
  const credentials = grpc.credentials.createSsl(readFileSync(ws.pki.caCert), readFileSync(cert.key), readFileSync(cert.cert));
  const client = new grpc.Client(`127.0.0.1:${agentPort}`, credentials, { 'grpc.use_local_subchannel_pool': 1 });
  const metadata = new grpc.Metadata();
  metadata.set(MD_AGENT_ID, `silent-${randomUUID()}`);
  metadata.set(MD_AGENT_IDENTIFIERS, `host=${host}`);
  const call = client.makeBidiStreamRequest<KnownPacket, Packet>(AGENT_CONNECT_PATH, serializePacket, deserializePacket, metadata);
  call.on('error', () => undefined);
  call.on('data', () => undefined);
  await new Promise((resolve) => call.once('metadata', resolve));
  return () => {
    call.cancel();
    client.close();
  };
}

test('open connections are capped per client and per agent; the open ones keep their bytes, and a closed one frees its slot', async (t) => {
  const ws = await workspace();
  t.teardown(() => ws.cleanup());
  const target = await echoTarget();
  t.teardown(() => target.close());
  const server = await startServer(ws, ['--max-connections-per-client=3', '--max-connections-per-agent=5']);
  t.teardown(() => server.stop());
  const agent = await startAgent(ws, server, 'cluster-a');
  t.teardown(() => agent.stop());
  const opened: Stream[] = [];
  t.teardown(() => { for (const conn of opened) conn.destroy(); });
  const address = `cluster-a:${target.port}`;
  const tls = await clientTls(ws);
  const ops = await issueFromLocalCa(ws.dir, { kind: 'client', commonName: 'ops', outDir: join(ws.dir, 'issued') });
  const opsTls = await clientTls(ws, ops.cert, ops.key);
  const connect = () => dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, address);
  for (let i = 0; i < 3; i++) opened.push(await connect());

  // The fourth of the same client is refused, on either frontend: a client is its certificate.
  const over = await t.throwsAsync(connect(), { instanceOf: ProxyError });
  t.is(over?.statusCode, 503);
  t.regex(over?.body ?? '', /too many connections of this client \(CN=tunnel-client, O=tunnel:clients\): 3 open or dialing \(--max-connections-per-client=3\)/);
  const overGrpc = await t.throwsAsync(dialGrpc({ host: '127.0.0.1', port: server.grpcPort, tls }, address), { instanceOf: DialError });
  t.regex(overGrpc?.message ?? '', /too many connections of this client/);

  // Another client may open its own, until the agent carries five.
  for (let i = 0; i < 2; i++) opened.push(await dialGrpc({ host: '127.0.0.1', port: server.grpcPort, tls: opsTls }, address));
  const agentFull = await t.throwsAsync(dialHttpConnect({ path: server.connectUds }, address), { instanceOf: ProxyError });
  t.is(agentFull?.statusCode, 503);
  t.regex(agentFull?.body ?? '', /too many connections through agent \S+: 5 open or dialing \(--max-connections-per-agent=5\)/);

  // The five carry their bytes intact.
  t.true(await allIntact(opened));

  // Closing one frees a slot for its client.
  opened.shift()!.destroy();
  let again: Stream | undefined;
  await eventually(async () => {
    again = await connect().catch(() => undefined);
    return again !== undefined;
  }, 10_000, 'a slot is free again');
  opened.push(again!);
  t.true(await allIntact(opened));

  t.is(await refusals(server.healthPort, 'http-connect', 'max_connections_per_client'), 1);
  t.is(await refusals(server.healthPort, 'grpc', 'max_connections_per_client'), 1);
  t.true(await refusals(server.healthPort, 'http-connect', 'max_connections_per_agent') >= 1);
  t.regex((await httpGet(server.healthPort, '/metrics')).body, /http_connect_requests_total\{outcome="limited"\} [1-9]/);
  t.regex(server.proc.output, /dial refused: a limit is reached limit=max_connections_per_client frontend=http-connect/);
  t.regex(server.proc.output, /dial refused: a limit is reached limit=max_connections_per_agent/);
});

test('dials per second are capped per client and per agent: a storm gets 429s, one log line, and the admitted connections their bytes', async (t) => {
  const ws = await workspace();
  t.teardown(() => ws.cleanup());
  const target = await echoTarget();
  t.teardown(() => target.close());
  const perClient = await startServer(ws, ['--max-dials-per-second-per-client=1'], 'per-client');
  t.teardown(() => perClient.stop());
  const perAgent = await startServer(ws, ['--max-dials-per-second-per-agent=1'], 'per-agent');
  t.teardown(() => perAgent.stop());
  for (const server of [perClient, perAgent]) {
    const agent = await startAgent(ws, server, 'cluster-a');
    t.teardown(() => agent.stop());
  }
  const opened: Stream[] = [];
  t.teardown(() => { for (const conn of opened) conn.destroy(); });
  const address = `cluster-a:${target.port}`;
  const storm = 20;

  // Per client: the unix-socket clients (one client) dial 20 at once.
  const results = await Promise.allSettled(Array.from({ length: storm }, () => dialHttpConnect({ path: perClient.connectUds }, address)));
  const admitted = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const refused = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as Error] : []));
  opened.push(...admitted);
  t.true(admitted.length >= 1 && refused.length >= 1, `${admitted.length} admitted, ${refused.length} refused`);
  for (const err of refused) {
    t.true(err instanceof ProxyError && err.statusCode === 429, err.message);
    t.regex((err as ProxyError).body, /too many dials of this client \(unix-socket clients\): more than 1 per second \(--max-dials-per-second-per-client\)/);
  }
  // Another client has its own budget.
  opened.push(await dialHttpConnect({ host: '127.0.0.1', port: perClient.connectPort, tls: await clientTls(ws) }, address));
  t.true(await allIntact(opened));
  t.is(await refusals(perClient.healthPort, 'http-connect', 'max_dials_per_second_per_client'), refused.length);
  const lines = perClient.proc.output.match(/dial refused: a limit is reached limit=max_dials_per_second_per_client/g) ?? [];
  t.true(lines.length >= 1 && lines.length < refused.length, `${lines.length} log lines for ${refused.length} refusals`);
  t.notRegex(perClient.proc.output, /CONNECT failed .*too many dials/, 'no line per refused dial');

  // Per agent: 20 gRPC dials at once through the one agent.
  const viaAgent = await Promise.allSettled(Array.from({ length: storm }, () => dialGrpc({ uds: perAgent.grpcUds }, address)));
  const through = viaAgent.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const refusedByAgent = viaAgent.flatMap((r) => (r.status === 'rejected' ? [r.reason as Error] : []));
  opened.push(...through);
  t.true(through.length >= 1 && refusedByAgent.length >= 1, `${through.length} admitted, ${refusedByAgent.length} refused`);
  for (const err of refusedByAgent) {
    t.true(err instanceof DialError, err.message);
    t.regex(err.message, /too many dials through agent \S+: more than 1 per second \(--max-dials-per-second-per-agent\)/);
  }
  t.true(await allIntact(through));
  t.is(await refusals(perAgent.healthPort, 'grpc', 'max_dials_per_second_per_agent'), refusedByAgent.length);
});

test('pending dials are capped server-wide: while an agent sits on two dials, a third is refused and open connections carry on', async (t) => {
  const ws = await workspace();
  t.teardown(() => ws.cleanup());
  const target = await echoTarget();
  t.teardown(() => target.close());
  const server = await startServer(ws, ['--max-pending-dials=2']);
  t.teardown(() => server.stop());
  const agent = await startAgent(ws, server, 'cluster-a');
  t.teardown(() => agent.stop());
  t.teardown(await silentAgent(ws, server.agentPort, 'silent'));
  const cancel = new AbortController();
  const opened: Stream[] = [];
  t.teardown(() => { for (const conn of opened) conn.destroy(); });
  const address = `cluster-a:${target.port}`;
  opened.push(await dialHttpConnect({ path: server.connectUds }, address));
  const hanging = [1, 2].map(() => dialGrpc({ uds: server.grpcUds }, 'silent:80', { signal: cancel.signal }).then(() => 'opened', (err: Error) => err.message));
  await eventually(async () => await metric(server.healthPort, `${SERVER}_pending_backend_dials`) === 2, 10_000, 'two dials pending');

  const refused = await t.throwsAsync(dialHttpConnect({ path: server.connectUds }, address), { instanceOf: ProxyError });
  t.is(refused?.statusCode, 503);
  t.regex(refused?.body ?? '', /too many pending dials: 2 dials are waiting for agents' answers \(--max-pending-dials=2\)/);
  const refusedGrpc = await t.throwsAsync(dialGrpc({ uds: server.grpcUds }, address), { instanceOf: DialError });
  t.regex(refusedGrpc?.message ?? '', /too many pending dials/);
  t.true(await allIntact(opened));

  // Once the pending dials are given up, dials are admitted again.
  cancel.abort();
  t.deepEqual((await Promise.all(hanging)).map((r) => r === 'opened'), [false, false]);
  await eventually(async () => await metric(server.healthPort, `${SERVER}_pending_backend_dials`) === 0, 10_000, 'no dial pending');
  opened.push(await dialHttpConnect({ path: server.connectUds }, address));
  t.true(await allIntact(opened));
  t.is(await refusals(server.healthPort, 'http-connect', 'max_pending_dials'), 1);
  t.is(await refusals(server.healthPort, 'grpc', 'max_pending_dials'), 1);
});
