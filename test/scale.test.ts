/**
 * Scale: 10,000 concurrent connections through one agent (the real binaries), opened by one
 * GrpcChannel on the server's unix socket (a thousand per kept gRPC connection: the first
 * dials on streams of their own, the rest on its carrier stream), all open at once, each
 * moving its own bytes (length and sha256 checked), then all closed: the connection tables
 * of server and agent are empty again.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { DEFAULT_MAX_STREAMS_PER_CONNECTION, GrpcChannel } from '../lib/client/grpc-channel.js';
import {
  echoTarget, eventually, metric, sha256, startAgent, startServer, workspace,
  type AgentHandle, type ServerHandle, type Target, type Workspace,
} from './helpers/system.js';

const CONNECTIONS = 10_000;
/** Dials in flight at once while opening: enough to keep both binaries busy, few enough for no dial to wait long. */
const OPENING = 200;
const PAYLOAD = 1024;
/** How long closing them all may take: seconds here, where a stalled connection takes 30. */
const CLOSE_MS = 15_000;
const SERVER = 'konnectivity_network_proxy_server';
const AGENT = 'konnectivity_network_proxy_agent';

let ws: Workspace;
let server: ServerHandle;
let agent: AgentHandle;
let target: Target;

test.before(async () => {
  ws = await workspace();
  target = await echoTarget();
  server = await startServer(ws);
  agent = await startAgent(ws, server, 'c1');
});

test.after.always(async () => {
  await agent?.stop();
  await server?.stop();
  await target?.close();
  ws?.cleanup();
});

/** Runs `fn` over 0..n-1 with at most `width` at a time. */
async function pool(n: number, width: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < n) await fn(next++);
  }));
}

/** Writes `payload` and resolves with the sha256 of the same number of bytes read back. */
function echo(conn: Duplex, payload: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let received = 0;
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      received += chunk.length;
      if (received < payload.length) return;
      conn.off('data', onData);
      conn.off('close', onClose);
      resolve(received === payload.length ? sha256(chunks) : `${received} bytes instead of ${payload.length}`);
    };
    const onClose = () => reject(new Error(`closed after ${received} of ${payload.length} bytes`));
    conn.on('data', onData);
    conn.once('close', onClose);
    conn.write(payload);
  });
}

test(`${CONNECTIONS} concurrent connections through one agent: all open at once, every byte intact, the tables empty after`, async (t) => {
  const channel = new GrpcChannel({ uds: server.grpcUds });
  const conns: Duplex[] = [];
  try {
    await pool(CONNECTIONS, OPENING, async () => {
      const conn = await channel.dial(`c1:${target.port}`, { timeoutMs: 60_000 });
      conn.on('error', () => {}); // a failure shows as a short or closed echo below
      conns.push(conn);
    });
    t.is(conns.length, CONNECTIONS);
    await eventually(async () => await metric(server.healthPort, `${SERVER}_established_connections`) === CONNECTIONS, 30_000, `the server to count ${CONNECTIONS} established connections`);
    t.is(await metric(agent.healthPort, `${AGENT}_open_endpoint_connections`), CONNECTIONS, 'the agent holds a target connection for each');
    t.is(target.open, CONNECTIONS, 'the target sees each connection');

    // Every connection moves its own bytes while all are open.
    const payloads = conns.map(() => randomBytes(PAYLOAD));
    const wrong: string[] = [];
    await pool(CONNECTIONS, 1_000, async (i) => {
      const got = await echo(conns[i], payloads[i]);
      if (got !== sha256(payloads[i])) wrong.push(`connection ${i}: ${got}`);
    });
    t.deepEqual(wrong.slice(0, 10), [], `${wrong.length} of ${CONNECTIONS} connections came back with other bytes`);

    t.is(channel.connectionsOpened, Math.ceil(CONNECTIONS / DEFAULT_MAX_STREAMS_PER_CONNECTION), 'the channel spreads its streams over connections');

    // All closed in the same instant: the closes must not stall a connection (they did for
    // 30 s when 10,000 streams shared one; see grpc-channel.ts), so the tables empty well before.
    for (const conn of conns) conn.destroy();
    await eventually(async () => await metric(server.healthPort, `${SERVER}_established_connections`) === 0, CLOSE_MS, 'the server\'s connection table to empty');
    await eventually(async () => await metric(agent.healthPort, `${AGENT}_open_endpoint_connections`) === 0, CLOSE_MS, 'the agent\'s connection table to empty');
    await eventually(() => target.open === 0, CLOSE_MS, 'the target\'s sockets to close');
    t.is(await metric(server.healthPort, `${SERVER}_pending_backend_dials`), 0);
    t.is(await metric(server.healthPort, `${SERVER}_buffered_bytes`), 0);
  } finally {
    for (const conn of conns) conn.destroy();
    channel.close();
  }
});
