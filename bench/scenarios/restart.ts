/**
 * restart: dials during a rolling restart. Three servers (--server-count=3) behind
 * round-robin balancers, one in front of their agent ports and one in front of their
 * HTTP-CONNECT ports, as a Deployment behind Services; one agent holds a stream to each.
 * Workers dial through the balancer and send a 2 KiB request in two halves 200 ms apart (so
 * that connections are open when a drain starts), check the 2 KiB answer and close: first in a steady state, then while each server in turn gets SIGTERM,
 * drains, exits and is replaced by a new one on the same ports. A refused dial (an error
 * status, or a closed connection before 200) is retried, and its latency counts from the
 * first attempt, as a client that retries sees it. Figures: accepted dials lost (an exchange
 * that failed after 200; target 0), dials refused, and p50/p99 dial latency against the
 * steady state of the same run.
 */
import net from 'node:net';
import { once } from 'node:events';
import { join } from 'node:path';
import { dialHttpConnect } from '../../lib/client/http-connect-dialer.js';
import { startTarget, type Helper } from '../lib/helpers.js';
import { createHash } from 'node:crypto';
import { now, percentile, sleep, KiB } from '../lib/measure.js';
import { bytesAt, mismatch, Received } from '../lib/content.js';
import { header } from '../lib/protocol.js';
import { clientSide, inCluster, startTunnelAgent, startTunnelServer, startWorkspace, type TunnelServer } from '../lib/tunnel.js';
import { integrityFailure, rethrowIntegrity } from '../lib/integrity.js';
import type { Workspace } from '../../harness/processes.js';
import type { TlsSource } from '../../lib/pki/tls-source.js';
import type { Context, Scenario } from '../lib/scenario.js';
import type { Scope } from '../lib/scope.js';

const SERVERS = 3;
const WORKERS = 8;
const HOLD_MS = 200;
const REQUEST_BYTES = 2 * KiB;
const EXCHANGE_LIMIT_MS = 10_000;
const DIAL_TIMEOUT_MS = 10_000;

interface Phase {
  accepted: number;
  refused: number;
  lost: number;
  firstLoss?: string;
  latenciesMs: number[];
}

/** A free port on 127.0.0.1, for a server that must come back on the same port. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Round robin over `ports`, skipping a backend that refuses the connection (as a Service drops an endpoint that is gone). */
async function roundRobin(scope: Scope, ports: number[]): Promise<number> {
  let next = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => undefined);
    client.pause();
    const attempt = (left: number) => {
      const backend = net.connect({ host: '127.0.0.1', port: ports[next++ % ports.length] });
      let connected = false;
      backend.once('connect', () => {
        connected = true;
        sockets.add(backend);
        backend.on('close', () => { sockets.delete(backend); client.destroy(); });
        client.on('close', () => backend.destroy());
        backend.on('error', () => client.destroy());
        client.pipe(backend).pipe(client);
        client.resume();
      });
      backend.once('error', () => {
        if (connected) return;
        if (left > 1) attempt(left - 1);
        else client.destroy();
      });
    };
    attempt(ports.length);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  scope.defer('balancer', () => { for (const s of sockets) s.destroy(); server.close(); });
  return (server.address() as net.AddressInfo).port;
}

/**
 * A request of REQUEST_BYTES of the stream from `offset`, its second half HOLD_MS after the
 * first; resolves once the same bytes came back (length and sha256).
 */
async function heldRequest(socket: net.Socket, offset: number): Promise<void> {
  const body = bytesAt(offset, REQUEST_BYTES);
  const expected = { offset, bytes: REQUEST_BYTES, sha256: createHash('sha256').update(body).digest('hex') };
  const received = new Received();
  let timer: NodeJS.Timeout | undefined;
  const answered = new Promise<void>((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`request/response: no full answer within ${EXCHANGE_LIMIT_MS} ms (${received.bytes}/${REQUEST_BYTES} bytes)`)), EXCHANGE_LIMIT_MS);
    socket.on('data', (chunk: Buffer) => {
      received.update(chunk);
      if (received.bytes < REQUEST_BYTES) return;
      const problem = mismatch('request/response', { bytes: received.bytes, sha256: received.digest() }, expected);
      if (problem) reject(integrityFailure(problem));
      else resolve();
    });
    socket.once('error', reject);
    socket.once('close', () => reject(new Error(`request/response: the connection closed after ${received.bytes}/${REQUEST_BYTES} bytes`)));
  });
  answered.catch(() => undefined);
  try {
    socket.write(Buffer.concat([header('R', REQUEST_BYTES, offset), body.subarray(0, REQUEST_BYTES / 2)]));
    await sleep(HOLD_MS);
    socket.write(body.subarray(REQUEST_BYTES / 2));
    await answered;
  } finally {
    clearTimeout(timer);
  }
}

/** Workers dial, exchange, hold, exchange and close until `running()` says stop. */
async function dialLoad(port: number, tls: TlsSource, target: Helper, running: () => boolean): Promise<Phase> {
  const phase: Phase = { accepted: 0, refused: 0, lost: 0, latenciesMs: [] };
  let offset = 0;
  const worker = async () => {
    while (running()) {
      const t0 = now();
      let socket: net.Socket | undefined;
      while (!socket && running()) {
        try {
          socket = await dialHttpConnect({ host: '127.0.0.1', port, tls }, inCluster(target.port), { timeoutMs: DIAL_TIMEOUT_MS });
        } catch {
          phase.refused++;
          await sleep(20);
        }
      }
      if (!socket) return;
      phase.latenciesMs.push(now() - t0);
      phase.accepted++;
      try {
        await heldRequest(socket, (offset += REQUEST_BYTES));
      } catch (err) {
        rethrowIntegrity(err);
        phase.lost++;
        phase.firstLoss ??= (err as Error).message;
      } finally {
        socket.destroy();
      }
    }
  };
  await Promise.all(Array.from({ length: WORKERS }, worker));
  return phase;
}

function serverArgs(ws: Workspace, i: number, agentPort: number, connectPort: number): string[] {
  return [
    `--server-count=${SERVERS}`, `--server-id=s${i}`, `--agent-port=${agentPort}`, `--server-port=${connectPort}`,
    `--uds-name=${join(ws.dir, `grpc-s${i}.sock`)}`, '--drain-timeout=30s',
  ];
}

export const restart: Scenario = {
  name: 'restart',
  title: 'dials during a rolling restart',
  plan: () => ['start target, balancers, 3 servers and agent', 'steady state', 'rolling restart'],

  async run(ctx: Context) {
    const { scope, config } = ctx;
    ctx.step('start target, balancers, 3 servers and agent');
    const target = await startTarget(scope);
    const ws = await startWorkspace(scope);
    const agentPorts = await Promise.all(Array.from({ length: SERVERS }, freePort));
    const connectPorts = await Promise.all(Array.from({ length: SERVERS }, freePort));
    const servers: TunnelServer[] = [];
    for (let i = 0; i < SERVERS; i++) servers.push(await startTunnelServer(scope, ws, serverArgs(ws, i, agentPorts[i], connectPorts[i])));
    const agentBalancer = await roundRobin(scope, agentPorts);
    const clientBalancer = await roundRobin(scope, connectPorts);
    const agent = await startTunnelAgent(scope, ws, agentBalancer);
    for (let i = 0; i < SERVERS; i++) await agent.proc.waitFor(new RegExp(`connected to tunnel server serverID=s${i}`), 30_000);
    const { clientTls } = await clientSide(scope, ws, servers[0]);

    const steadySeconds = Math.max(2, 2 * config.churnSeconds);
    ctx.step(`steady state (${steadySeconds.toFixed(1)} s, ${WORKERS} workers)`);
    const steadyEnd = now() + steadySeconds * 1000;
    const steady = await dialLoad(clientBalancer, clientTls, target, () => now() < steadyEnd);

    ctx.step(`rolling restart (${SERVERS} servers, one at a time)`);
    let restarting = true;
    const started = now();
    const during = dialLoad(clientBalancer, clientTls, target, () => restarting);
    try {
      for (let i = 0; i < SERVERS; i++) {
        const from = agent.proc.output.length;
        const t0 = now();
        servers[i].proc.child.kill('SIGTERM');
        const code = await servers[i].proc.exited;
        const drained = /drained: every connection has finished/.test(servers[i].proc.output);
        servers[i] = await startTunnelServer(scope, ws, serverArgs(ws, i, agentPorts[i], connectPorts[i]));
        await agent.proc.waitFor(new RegExp(`connected to tunnel server serverID=s${i}`), 30_000, from);
        ctx.info(`s${i}: exited ${code} (${drained ? 'drained' : 'drain timeout'}), back and connected after ${((now() - t0) / 1000).toFixed(1)} s`);
      }
    } finally {
      restarting = false;
    }
    const rolling = await during;
    const seconds = (now() - started) / 1000;

    const p = (phase: Phase, q: number) => phase.latenciesMs.length > 0 ? percentile(phase.latenciesMs, q) : null;
    for (const [label, phase] of [['steady', steady], ['rolling restart', rolling]] as const) {
      ctx.info(`${label}: ${phase.accepted} accepted, ${phase.refused} refused, ${phase.lost} lost${phase.firstLoss ? ` (first: ${phase.firstLoss})` : ''}; p50 ${p(phase, 50)?.toFixed(1) ?? 'n/a'} ms, p99 ${p(phase, 99)?.toFixed(1) ?? 'n/a'} ms`);
    }
    ctx.record({
      figure: 'accepted dials lost during the restart',
      value: rolling.lost,
      unit: 'dials',
      target: { on: 'value', op: '<=', limit: 0 },
      note: `${rolling.accepted} accepted in ${seconds.toFixed(1)} s${rolling.firstLoss ? `; first loss: ${rolling.firstLoss}` : ''}`,
    });
    ctx.record({ figure: 'dials refused during the restart (retried)', value: rolling.refused, unit: 'dials', baseline: { label: 'steady', value: steady.refused } });
    ctx.record({ figure: 'dial latency p50', value: p(rolling, 50), unit: 'ms', baseline: { label: 'steady', value: p(steady, 50) } });
    ctx.record({ figure: 'dial latency p99', value: p(rolling, 99), unit: 'ms', baseline: { label: 'steady', value: p(steady, 99) } });
  },
};
