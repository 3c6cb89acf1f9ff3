/**
 * phases: where one churn cycle's time goes, one cycle at a time, through the mTLS relay and
 * through HTTP-CONNECT (full and resumed TLS). The client times each phase of a cycle on its
 * side of the wire:
 *
 *   tcp       connect() to the TCP connection's establishment (the server's accept)
 *   tls       from there to the end of the TLS handshake (client's and server's parts)
 *   connect   CONNECT sent to `200` received: the server parses it, sends DIAL_REQ on the
 *             agent's stream, the agent connects to the target and answers DIAL_RSP
 *   exchange  1 KiB request to the whole 1 KiB response (checked: length and sha256)
 *   close     end() to the socket's close: the close travels to the target and back
 *
 * The server's and the agent's own view of the dial comes from their dial_duration_seconds
 * histograms (DIAL_REQ to DIAL_RSP on the server, the target's connect on the agent), and
 * the CPU of each process per cycle from /proc. Baseline of each phase: the relay's.
 */
import { once } from 'node:events';
import tls from 'node:tls';
import { startTarget, startTlsRelay, type Helper } from '../lib/helpers.js';
import { now, percentile, requestResponse, KiB } from '../lib/measure.js';
import { agentMetric, clientSide, inCluster, serverMetric, startTunnel, startTunnelAgent, startTunnelServer, type Tunnel } from '../lib/tunnel.js';
import { cpuMeter, formatCpuPer, type CpuUse } from '../lib/cpu.js';
import { connectTls } from '../../lib/transport/tls-dial.js';
import type { Context, Scenario } from '../lib/scenario.js';

const PHASES = ['tcp', 'tls', 'connect', 'exchange', 'close'] as const;
type Phase = (typeof PHASES)[number];
const LIMIT_MS = 10_000;
const RELAY = 'mTLS relay';
const FULL = 'HTTP-CONNECT';
const RESUMED = 'HTTP-CONNECT, resumed TLS';

interface Path {
  label: string;
  port: number;
  /** The tunnel the path goes through (none for the relay). */
  tunnel?: Tunnel;
  resume: boolean;
  pids: Record<string, number>;
}

interface PhaseRun {
  ms: Record<Phase, number[]>;
  cycles: number;
  cpu: CpuUse[];
  resumed: number;
  /** Mean DIAL_REQ to DIAL_RSP on the server and target connect on the agent, in ms. */
  serverDialMs?: number;
  agentDialMs?: number;
}

function withLimit<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} took over ${LIMIT_MS} ms`)), LIMIT_MS); }),
  ]).finally(() => clearTimeout(timer));
}

/** Reads the response head of a CONNECT; leaves the socket paused after it. */
function connectResponse(socket: tls.TLSSocket): Promise<void> {
  return new Promise((resolve, reject) => {
    let head = '';
    const onData = (chunk: Buffer) => {
      head += chunk.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.off('data', onData);
      socket.pause();
      if (!head.startsWith('HTTP/1.1 200')) reject(new Error(`CONNECT answered ${JSON.stringify(head.slice(0, head.indexOf('\r\n')))}`));
      else if (end + 4 < head.length) reject(new Error('bytes after the CONNECT response head before any request'));
      else resolve();
    };
    socket.on('data', onData);
  });
}

/** The sum and count of a histogram on a health port. */
async function histogram(read: (name: string) => Promise<number>, name: string): Promise<{ sum: number; count: number }> {
  return { sum: await read(`${name}_sum`), count: await read(`${name}_count`) };
}

async function runPath(path: Path, target: Helper, secureContext: tls.SecureContext, cycles: number): Promise<PhaseRun> {
  const run: PhaseRun = { ms: { tcp: [], tls: [], connect: [], exchange: [], close: [] }, cycles: 0, cpu: [], resumed: 0 };
  const tunnel = path.tunnel;
  const serverRead = (name: string) => serverMetric(tunnel!.server, name);
  const agentRead = (name: string) => agentMetric(tunnel!.agent, name);
  const serverBefore = tunnel && await histogram(serverRead, 'dial_duration_seconds');
  const agentBefore = tunnel && await histogram(agentRead, 'dial_duration_seconds');
  let session: Buffer | undefined;
  const meter = cpuMeter(path.pids);
  for (let n = 0; n < cycles; n++) {
    const t0 = now();
    const socket = connectTls({ host: '127.0.0.1', port: path.port, secureContext, servername: 'localhost', ...(path.resume && session ? { session } : {}) });
    socket.on('error', () => {}); // a failure shows as a rejected phase below
    if (path.resume) socket.once('session', (s: Buffer) => { session = s; });
    try {
      await withLimit(once(socket, 'connect'), `${path.label}: TCP connect`);
      const t1 = now();
      await withLimit(once(socket, 'secureConnect'), `${path.label}: TLS handshake`);
      const t2 = now();
      socket.setNoDelay(true);
      if (socket.isSessionReused()) run.resumed++;
      if (tunnel) {
        const answered = connectResponse(socket);
        socket.write(`CONNECT ${inCluster(target.port)} HTTP/1.1\r\nHost: ${inCluster(target.port)}\r\n\r\n`);
        await withLimit(answered, `${path.label}: CONNECT`);
      }
      const t3 = now();
      await requestResponse(socket, KiB, LIMIT_MS, n * KiB);
      const t4 = now();
      const closed = once(socket, 'close');
      socket.end();
      await withLimit(closed, `${path.label}: close`);
      const t5 = now();
      run.ms.tcp.push(t1 - t0);
      run.ms.tls.push(t2 - t1);
      run.ms.connect.push(t3 - t2);
      run.ms.exchange.push(t4 - t3);
      run.ms.close.push(t5 - t4);
      run.cycles++;
    } finally {
      socket.destroy();
    }
  }
  run.cpu = meter();
  if (tunnel && serverBefore && agentBefore) {
    const serverAfter = await histogram(serverRead, 'dial_duration_seconds');
    const agentAfter = await histogram(agentRead, 'dial_duration_seconds');
    const mean = (a: { sum: number; count: number }, b: { sum: number; count: number }) => (b.count > a.count ? ((b.sum - a.sum) / (b.count - a.count)) * 1000 : undefined);
    run.serverDialMs = mean(serverBefore, serverAfter);
    run.agentDialMs = mean(agentBefore, agentAfter);
  }
  return run;
}

export const phases: Scenario = {
  name: 'phases',
  title: 'churn cycle phases',
  plan: () => ['start target, relay and tunnels', 'warm up', RELAY, FULL, RESUMED],

  async run(ctx: Context) {
    const { config, scope } = ctx;
    ctx.step('start target, relay and tunnels');
    const target = await startTarget(scope);
    const tunnel = await startTunnel(scope);
    const relay = await startTlsRelay(scope, target.port, tunnel.ws.pki);
    const resumingServer = await startTunnelServer(scope, tunnel.ws, ['--tls-resumption', `--uds-name=${tunnel.ws.dir}/grpc-resuming.sock`]);
    const resumingAgent = await startTunnelAgent(scope, tunnel.ws, resumingServer.agentPort);
    const resuming: Tunnel = { ...tunnel, server: resumingServer, agent: resumingAgent, ...(await clientSide(scope, tunnel.ws, resumingServer)) };
    const tunnelPids = (t: Tunnel) => ({ client: process.pid, server: t.server.pid, agent: t.agent.pid, target: target.pid });
    const paths: Path[] = [
      { label: RELAY, port: relay.port, resume: false, pids: { client: process.pid, [relay.name]: relay.pid, target: target.pid } },
      { label: FULL, port: tunnel.server.connectPort, tunnel, resume: false, pids: tunnelPids(tunnel) },
      { label: RESUMED, port: resumingServer.connectPort, tunnel: resuming, resume: true, pids: tunnelPids(resuming) },
    ];
    const { key, cert, ca } = tunnel.clientTls.current();
    const secureContext = tls.createSecureContext({ key, cert, ca });

    // Warmed up as churn's paths are (see churn.ts): a cycle runs a connection's whole life once.
    const warmup = Math.round(config.churnWarmupCycles / 2);
    ctx.step(`warm up (${warmup} cycles per path)`);
    for (const path of paths) await runPath(path, target, secureContext, warmup);

    const cycles = Math.max(100, Math.round(config.churnSeconds * 300));
    const byLabel = new Map<string, PhaseRun>();
    for (const path of paths) {
      ctx.step(`${path.label} (${cycles} cycles, one at a time)`);
      const run = await runPath(path, target, secureContext, cycles);
      byLabel.set(path.label, run);
      const base = path.label === RELAY ? undefined : byLabel.get(RELAY);
      const medians = PHASES.map((p) => `${p} ${percentile(run.ms[p], 50).toFixed(3)}`).join(', ');
      ctx.info(`${path.label}: median ms ${medians}; CPU per cycle: ${formatCpuPer(run.cpu, run.cycles)}${path.resume ? `; ${run.resumed} of ${run.cycles} resumed` : ''}`);
      for (const phase of PHASES) {
        if (!path.tunnel && phase === 'connect') continue;
        const baseValue = base && phase !== 'connect' ? percentile(base.ms[phase], 50) : undefined;
        ctx.record({
          figure: `${path.label}: ${phase} p50`,
          value: percentile(run.ms[phase], 50),
          unit: 'ms',
          baseline: baseValue !== undefined ? { label: RELAY, value: baseValue } : undefined,
        });
      }
      const total = (r: PhaseRun) => PHASES.reduce((sum, p) => sum + percentile(r.ms[p], 50), 0);
      ctx.record({
        figure: `${path.label}: cycle (sum of p50s)`,
        value: total(run),
        unit: 'ms',
        baseline: base ? { label: RELAY, value: total(base) } : undefined,
        note: `CPU per cycle: ${formatCpuPer(run.cpu, run.cycles)}`,
      });
      if (run.serverDialMs !== undefined) ctx.record({ figure: `${path.label}: server DIAL_REQ to DIAL_RSP (mean)`, value: run.serverDialMs, unit: 'ms' });
      if (run.agentDialMs !== undefined) ctx.record({ figure: `${path.label}: agent target connect (mean)`, value: run.agentDialMs, unit: 'ms' });
    }
  },
};
