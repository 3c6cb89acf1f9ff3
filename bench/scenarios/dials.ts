/**
 * 4. dials: connection churn on the gRPC frontend (its unix socket), one at a time and 32 at
 * a time: dial, 1 KiB request, 1 KiB response, close, as churn does. Two clients: the fast
 * path, a GrpcChannel that keeps one connection and one Proxy stream and opens every
 * tunneled connection with one DIAL_REQ on it, and the one-shot dialer that opens a
 * connection and a stream per dial, as kube-apiserver's egress does. Baseline: the same cycle as a plain
 * gRPC bidi call, opened and closed on one kept connection to a server in this process
 * (our gRPC transport, an echo handler: what a stream's open and close cost, with no
 * tunnel). Targets: the channel at least 500 cycles/s one at a time and 2,000 at 32.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type http2 from 'node:http2';
import { startTarget } from '../lib/helpers.js';
import { requestResponse, KiB } from '../lib/measure.js';
import { inCluster, startTunnel } from '../lib/tunnel.js';
import { bytesAt } from '../lib/content.js';
import { integrityFailure } from '../lib/integrity.js';
import { cycles, summarize } from './churn.js';
import type { Context, Scenario } from '../lib/scenario.js';
import { GrpcChannel } from '../../lib/client/grpc-channel.js';
import { dialGrpc } from '../../lib/client/grpc-dialer.js';
import { GrpcServer, type ServerCall } from '../../lib/transport/grpc-server.js';
import { closeSession, connect, startCall } from '../../lib/transport/grpc-client.js';
import { Metadata } from '../../lib/transport/grpc-metadata.js';
import { PacketType, dataPacket, isUnknown, type Packet } from '../../lib/wire/packet.js';
import { PROXY_PATH } from '../../lib/wire/protocol.js';
import { logger } from '../../lib/observe/log.js';
import type { TunnelConnection } from '../../lib/mux/tunnel-connection.js';

const SIZE = KiB;
const CYCLE_LIMIT_MS = 10_000;
const WARMUP_LIMIT_S = 30;
const BASELINE = 'gRPC bidi call';
const CHANNEL = 'gRPC channel';
const ONE_SHOT = 'gRPC one-shot';
const PATHS = [BASELINE, CHANNEL, ONE_SHOT];
const TARGETS: Record<number, number> = { 1: 500, 32: 2_000 };

/** An in-process gRPC server whose calls echo every packet; the baseline's other end. */
async function echoServer(path: string): Promise<GrpcServer> {
  const server = new GrpcServer({ name: 'bench echo', log: logger('bench') });
  server.handle(PROXY_PATH, (call: ServerCall) => {
    call.sendMetadata(new Metadata());
    const packets = call.packets;
    packets.on('data', (packet: Packet) => packets.write(packet));
    packets.on('end', () => call.sendStatus(0));
    packets.on('error', () => undefined);
  });
  await server.listen({ path });
  return server;
}

/** One baseline cycle: open a call, send 1 KiB, read it back (checked), close, wait for the end. */
function bidiCycle(session: http2.ClientHttp2Session, n: number): Promise<void> {
  const body = bytesAt(n * SIZE, SIZE);
  const { stream } = startCall(session, PROXY_PATH, new Metadata());
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { stream.destroy(); reject(new Error(`no echo within ${CYCLE_LIMIT_MS} ms`)); }, CYCLE_LIMIT_MS);
    let echoed: Buffer | undefined;
    stream.on('data', (packet: Packet) => {
      if (!isUnknown(packet) && packet.type === PacketType.DATA) echoed = Buffer.from(packet.data);
      stream.end();
    });
    stream.on('error', (err: Error) => { clearTimeout(timer); reject(err); });
    stream.on('close', () => {
      clearTimeout(timer);
      const digest = (b: Buffer) => createHash('sha256').update(b).digest('hex');
      if (!echoed || echoed.length !== SIZE || digest(echoed) !== digest(body)) {
        reject(integrityFailure(`gRPC bidi call: ${echoed?.length ?? 0}/${SIZE} bytes came back${echoed?.length === SIZE ? ', different ones' : ''}`));
      } else {
        resolve();
      }
    });
    stream.resume();
    stream.write(dataPacket(1n, body));
  });
}

export const dials: Scenario = {
  name: 'dials',
  title: 'gRPC frontend dials',
  plan: () => ['start target, tunnel and echo server', 'warm up', ...[1, 32].flatMap((c) => PATHS.map((p) => `${p}, ${c} at a time`))],

  async run(ctx: Context) {
    const { config, scope } = ctx;
    ctx.step('start target, tunnel and echo server');
    const target = await startTarget(scope);
    const tunnel = await startTunnel(scope);
    const echo = await echoServer(join(tunnel.ws.dir, 'bench-echo.sock'));
    scope.defer('echo server', () => echo.close());
    const session = await connect({ target: { uds: join(tunnel.ws.dir, 'bench-echo.sock') }, timeoutMs: 10_000 });
    scope.defer('echo session', () => closeSession(session, 1_000));
    const channel = new GrpcChannel(tunnel.grpcProxy);
    scope.defer('gRPC channel', () => channel.close());

    const address = inCluster(target.port);
    const tunnelPids = { client: process.pid, server: tunnel.server.pid, agent: tunnel.agent.pid, target: target.pid };
    const through = (open: () => Promise<TunnelConnection>) => async (n: number) => {
      const conn = await open();
      try {
        await requestResponse(conn, SIZE, CYCLE_LIMIT_MS, n * SIZE);
      } finally {
        conn.destroy();
      }
    };
    const paths: Record<string, { pids: Record<string, number>; cycle: (n: number) => Promise<void> }> = {
      [BASELINE]: { pids: { client: process.pid }, cycle: (n) => bidiCycle(session, n) },
      [CHANNEL]: { pids: tunnelPids, cycle: through(() => channel.dial(address, { timeoutMs: CYCLE_LIMIT_MS })) },
      [ONE_SHOT]: { pids: tunnelPids, cycle: through(() => dialGrpc(tunnel.grpcProxy, address, { timeoutMs: CYCLE_LIMIT_MS })) },
    };

    ctx.step(`warm up (${config.churnWarmupCycles} cycles per path, 32 at a time)`);
    for (const label of PATHS) {
      const warm = await cycles(paths[label].pids, 32, WARMUP_LIMIT_S, config.churnWarmupCycles, paths[label].cycle);
      ctx.info(`${label}: ${warm.cycles} cycles in ${warm.seconds.toFixed(1)} s`);
    }

    for (const concurrency of [1, 32]) {
      let baseline: ReturnType<typeof summarize> | undefined;
      for (const label of PATHS) {
        ctx.step(`${label}, ${concurrency} at a time (${config.churnSeconds} s)`);
        const run = summarize(await cycles(paths[label].pids, concurrency, config.churnSeconds, Number.POSITIVE_INFINITY, paths[label].cycle));
        ctx.info(run.line);
        const base = label === BASELINE ? undefined : { label: BASELINE, value: baseline?.rate ?? null };
        const note = [run.failed, label === BASELINE ? '' : run.cpu].filter(Boolean).join('; ') || undefined;
        ctx.record({
          figure: `${label}, ${concurrency} at a time: rate`,
          value: run.rate,
          unit: 'cycles/s',
          baseline: base,
          target: label === CHANNEL ? { on: 'value', op: '>=', limit: TARGETS[concurrency] } : undefined,
          note,
        });
        ctx.record({ figure: `${label}, ${concurrency} at a time: p50`, value: run.p50, unit: 'ms', baseline: base && { label: BASELINE, value: baseline?.p50 ?? null } });
        ctx.record({ figure: `${label}, ${concurrency} at a time: p99`, value: run.p99, unit: 'ms', baseline: base && { label: BASELINE, value: baseline?.p99 ?? null } });
        if (label === BASELINE) baseline = run;
      }
    }
  },
};
