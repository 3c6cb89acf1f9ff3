/**
 * 11. agents: what an idle agent costs the server a hub runs, with 1,000 of them (2,000 with
 * --full) on one tunnel-server. Each agent is a cluster of its own, with its own certificate,
 * HTTP/2 connections and agent stream, opened by the TunnelAgent class the tunnel-agent
 * binary runs; they live in helper processes (agents-process.ts), since a process per agent
 * would not fit. Server RSS before any agent, with all of them connected and idle, and after
 * they disconnected; server CPU over an idle window with them and with none; how fast they
 * connect. A sample of them carries an echo before and after the idle window, checked for
 * length and sha256, so the agents measured are live, not merely connected.
 *
 * Twice, each time on a fresh server: agents as tunnel-agent opens its streams by default
 * (a second connection for the server -> agent direction), and on one connection each, as
 * the reference agent (and tunnel-agent --single-stream) connects. Most of an idle agent's
 * cost is its connections, so the two differ by about one connection's.
 */
import { fileURLToPath } from 'node:url';
import { dialHttpConnect } from '../../lib/client/http-connect-dialer.js';
import { forkWorker, startTarget, type Helper, type Worker } from '../lib/helpers.js';
import type { AgentsCommand, AgentsReport } from '../lib/agents-process.js';
import { cpuMeter, cpuMs } from '../lib/cpu.js';
import { now, pool, requestResponse, sleep, waitUntil, KiB, MiB } from '../lib/measure.js';
import { procRss, rssOf, type Rss } from '../lib/rss.js';
import { Scope, stopChild } from '../lib/scope.js';
import { clientSide, serverMetric, startTunnelServer, startWorkspace, type TunnelServer } from '../lib/tunnel.js';
import { heapOf, lastReclaim } from './memory.js';
import type { Config, Context, Scenario } from '../lib/scenario.js';
import type { Target } from '../lib/results.js';
import type { HttpConnectProxy } from '../../lib/client/http-connect-dialer.js';

const CLUSTER_PREFIX = 'agent';
/** One process holds this many agents (about 280 MiB of them with split streams). */
const AGENTS_PER_PROCESS = 1_000;
/** Agents connecting at once, all processes together: a hub after a restart sees its agents come back in a wave like this. */
const CONNECT_CONCURRENCY = 50;
/** Agents started, proven and stopped before the measurement, so that it holds no one-time cost (code, caches). */
const WARMUP_AGENTS = 50;
/** Every SAMPLE_EVERY-th agent carries an echo. */
const SAMPLE_EVERY = 50;
const ECHO_BYTES = 64 * KiB;
/** Per agent at most: its uplink and downlink connections (when the directions are split). */
const FDS_PER_AGENT = 2;
/** File descriptors each process needs beyond the agents' connections (listeners, libs, stdio). */
const FD_HEADROOM = 512;
const SETTLE_MS = 3_000;
/** After the agents left: as long as the memory scenario gives the server to collect. */
const SETTLE_AFTER_CLOSE_MS = 10_000;
const ECHO_LIMIT_MS = 30_000;

type AgentsWorker = Worker<AgentsCommand, AgentsReport>;

interface Gauges {
  backends: number;
  streams: number;
}

async function gauges(server: TunnelServer): Promise<Gauges> {
  return { backends: await serverMetric(server, 'ready_backends'), streams: await serverMetric(server, 'agent_streams') };
}

const describe = (g: Gauges) => `${g.backends} ready backends, ${g.streams} agent streams`;

/** Waits until the server counts `count` agents (backends and streams); returns whether it did. */
function serverCounts(server: TunnelServer, count: number, timeoutMs: number): Promise<boolean> {
  return waitUntil(async () => {
    const g = await gauges(server);
    return g.backends === count && g.streams === count;
  }, timeoutMs);
}

/** The answer to a command, or an error that says what the agents' process reported. */
async function ask(worker: AgentsWorker, command: AgentsCommand, timeoutMs: number): Promise<AgentsReport> {
  const report = await worker.request(command, timeoutMs);
  if (report.op === 'error') throw new Error(`${worker.name}: ${command.op} failed: ${report.message}`);
  return report;
}

/** A process of `count` agents, clusters `agent-<first>` on, connecting to the server's agent port. */
async function startAgents(scope: Scope, server: TunnelServer, pki: { caCert: string; caKey: string }, opts: { first: number; count: number; concurrency: number; prefix: string; name: string; singleStream: boolean }): Promise<AgentsWorker> {
  const script = fileURLToPath(new URL('../lib/agents-process.js', import.meta.url));
  const worker = await forkWorker<AgentsCommand, AgentsReport>(scope, script, [
    `--server=127.0.0.1:${server.agentPort}`, `--ca-cert=${pki.caCert}`, `--ca-key=${pki.caKey}`,
    `--prefix=${opts.prefix}`, `--first=${opts.first}`, `--count=${opts.count}`, `--concurrency=${opts.concurrency}`, `--single-stream=${opts.singleStream}`,
  ], opts.name, 120_000);
  if (worker.ready.op !== 'ready') throw new Error(`${opts.name} reported ${JSON.stringify(worker.ready)} instead of being ready`);
  return worker;
}

/**
 * One echo of ECHO_BYTES through the HTTP-CONNECT frontend to `<cluster>:<target port>` per
 * cluster, which only that cluster's agent serves; each answer is checked (length and sha256).
 */
async function echoThrough(proxy: HttpConnectProxy, target: Helper, clusters: string[]): Promise<void> {
  await pool(clusters.length, 4, async (i) => {
    const address = `${clusters[i]}:${target.port}`;
    const conn = await dialHttpConnect(proxy, address, { timeoutMs: ECHO_LIMIT_MS }).catch((err: Error) => {
      throw new Error(`the echo through the agent of ${clusters[i]} could not be dialed (${address}): ${err.message}`, { cause: err });
    });
    conn.on('error', () => undefined);
    try {
      await requestResponse(conn, ECHO_BYTES, ECHO_LIMIT_MS, i * ECHO_BYTES);
    } finally {
      conn.destroy();
    }
  });
}

const rssLine = (label: string, rss: Rss) => `${label}: server ${(rss.bytes / MiB).toFixed(1)} MiB`;

interface Layout {
  /** Names the figures of this layout. */
  label: string;
  singleStream: boolean;
  connections: number;
  /** Only the default layout's figures have targets: it is what a hub runs. */
  targets: boolean;
}

const LAYOUTS: Layout[] = [
  { label: 'split', singleStream: false, connections: 2, targets: true },
  { label: 'one connection', singleStream: true, connections: 1, targets: false },
];

const steps = (config: Config, layout: Layout) => [
  `${layout.label}: start a server, echo target and warm-up agents`,
  `${layout.label}: issue ${config.agents} agent certificates`,
  `${layout.label}: server idle for ${config.agentIdleSeconds} s with no agent`,
  `${layout.label}: connect ${config.agents} agents`,
  `${layout.label}: idle for ${config.agentIdleSeconds} s with ${config.agents} agents`,
  `${layout.label}: disconnect them and wait for the server to settle`,
];

/**
 * One layout on a fresh server: every figure of the scenario for it. Its processes are
 * stopped before the next layout starts, so that they take neither CPU nor memory from it.
 */
async function measure(ctx: Context, layout: Layout, count: number, notes: string[]): Promise<void> {
  const scope = new Scope();
  ctx.scope.defer(`the ${layout.label} layout's processes`, () => scope.close());
  try {
    await measureIn(ctx, scope, layout, count, notes);
  } finally {
    for (const problem of await scope.close()) notes.push(`${layout.label}: ${problem}`);
  }
}

async function measureIn(ctx: Context, scope: Scope, layout: Layout, count: number, notes: string[]): Promise<void> {
  const { config } = ctx;
  const idleMs = config.agentIdleSeconds * 1000;
  const connectTimeoutMs = config.full ? 300_000 : 120_000;
  const [startStep, issueStep, baseStep, connectStep, idleStep, closeStep] = steps({ ...config, agents: count }, layout);
  const mark = (what: string) => `${layout.label}: ${what}`;

  ctx.step(startStep);
  const ws = await startWorkspace(scope);
  const server = await startTunnelServer(scope, ws);
  const { connectProxy } = await clientSide(scope, ws, server);
  const target = await startTarget(scope, 'echo target');
  const warmup = await startAgents(scope, server, ws.pki, {
    first: 0, count: WARMUP_AGENTS, concurrency: CONNECT_CONCURRENCY, prefix: 'warmup', name: 'warm-up agents', singleStream: layout.singleStream,
  });
  await ask(warmup, { op: 'connect' }, connectTimeoutMs);
  if (!(await serverCounts(server, WARMUP_AGENTS, 30_000))) throw new Error(`the server did not count the ${WARMUP_AGENTS} warm-up agents within 30 s (${describe(await gauges(server))})`);
  await echoThrough(connectProxy, target, Array.from({ length: WARMUP_AGENTS }, (_, i) => `warmup-${i}`));
  await ask(warmup, { op: 'stop' }, 60_000);
  await stopChild(warmup.child);
  if (!(await serverCounts(server, 0, 30_000))) throw new Error(`30 s after the warm-up agents stopped, the server still counted ${describe(await gauges(server))}`);

  ctx.step(issueStep);
  const processes = Math.ceil(count / AGENTS_PER_PROCESS);
  const workers: AgentsWorker[] = [];
  for (let p = 0; p < processes; p++) {
    const first = p * AGENTS_PER_PROCESS;
    workers.push(await startAgents(scope, server, ws.pki, {
      first,
      count: Math.min(AGENTS_PER_PROCESS, count - first),
      concurrency: Math.ceil(CONNECT_CONCURRENCY / processes),
      prefix: CLUSTER_PREFIX,
      name: `agents ${p + 1}/${processes}`,
      singleStream: layout.singleStream,
    }));
  }
  const issueSeconds = workers.reduce((s, w) => s + (w.ready.op === 'ready' ? w.ready.issueSeconds : 0), 0);
  ctx.info(`${count} certificates (ECDSA P-256, one cluster each) issued in ${issueSeconds.toFixed(1)} s in ${processes} process${processes === 1 ? '' : 'es'}`);

  ctx.step(baseStep);
  await sleep(SETTLE_MS);
  const before = await rssOf(server.pid, server.healthPort);
  ctx.info(`${rssLine('before', before)}; ${await heapOf(server.healthPort)}`);
  const idleBase = cpuMeter({ server: server.pid });
  await sleep(idleMs);
  const [base] = idleBase();
  ctx.info(`server CPU with no agent: ${base.ms.toFixed(0)} ms in ${config.agentIdleSeconds} s`);

  ctx.step(connectStep);
  const helpersRss = () => workers.reduce((n, w) => n + procRss(w.pid), 0);
  const helpersBefore = helpersRss();
  const connectStart = now();
  const reports = await Promise.all(workers.map((w) => ask(w, { op: 'connect' }, connectTimeoutMs)));
  const counted = await serverCounts(server, count, 30_000);
  const connectSeconds = (now() - connectStart) / 1000;
  let connected = 0;
  for (const r of reports) {
    if (r.op !== 'connected') continue;
    connected += r.connected;
    if (r.failed > 0) notes.push(`${layout.label}: ${r.failed} agents did not connect (first: ${r.firstFailure})`);
  }
  const seen = await gauges(server);
  ctx.info(`${connected} of ${count} connected in ${connectSeconds.toFixed(1)} s; the server counts ${describe(seen)}`);
  if (!counted) notes.push(`${layout.label}: with ${connected} agents connected the server counted ${describe(seen)}`);
  if (connected === 0) throw new Error(`no agent connected to the server (${reports.map((r) => (r.op === 'connected' ? r.firstFailure : r.op)).join('; ')})`);
  const sample = Array.from({ length: Math.ceil(count / SAMPLE_EVERY) }, (_, i) => `${CLUSTER_PREFIX}-${i * SAMPLE_EVERY}`);
  await echoThrough(connectProxy, target, sample);
  ctx.info(`echo of ${ECHO_BYTES / KiB} KiB through ${sample.length} agents (every ${SAMPLE_EVERY}th): bytes checked`);

  ctx.step(idleStep);
  await sleep(SETTLE_MS);
  const during = await rssOf(server.pid, server.healthPort);
  const helpersDuring = helpersRss();
  ctx.info(`${rssLine(`with ${count} agents`, during)}; ${await heapOf(server.healthPort)}`);
  const idleWith = cpuMeter({ server: server.pid });
  const helpersCpu = workers.reduce((n, w) => n + cpuMs(w.pid), 0);
  await sleep(idleMs);
  const [withAgents] = idleWith();
  const helpersIdleMs = workers.reduce((n, w) => n + cpuMs(w.pid), 0) - helpersCpu;
  ctx.info(`server CPU with ${count} idle agents: ${withAgents.ms.toFixed(0)} ms in ${config.agentIdleSeconds} s; the agents' processes: ${helpersIdleMs.toFixed(0)} ms`);
  // Still live after idling: nothing (keepalive, a timer) took them down meanwhile.
  await echoThrough(connectProxy, target, sample);
  const still = await gauges(server);
  if (still.backends !== count) notes.push(`${layout.label}: after the idle window the server counted ${describe(still)}`);

  ctx.step(closeStep);
  const closeStart = now();
  await Promise.all(workers.map((w) => ask(w, { op: 'stop' }, 60_000)));
  const settled = await serverCounts(server, 0, 60_000);
  const closeSeconds = (now() - closeStart) / 1000;
  if (!settled) notes.push(`${layout.label}: 60 s after the agents stopped, the server still counted ${describe(await gauges(server))}`);
  await sleep(SETTLE_AFTER_CLOSE_MS);
  const after = await rssOf(server.pid, server.healthPort);
  ctx.info(`gone from the server in ${closeSeconds.toFixed(1)} s; ${rssLine('after', after)}; ${await heapOf(server.healthPort)}`);
  ctx.info(`server: ${lastReclaim(server.proc.output) ?? 'no collection after the agents left'}`);

  const perAgent = (a: number, b: number) => (a - b) / count / KiB;
  const cpuPerAgentMs = (withAgents.ms - base.ms) / count;
  const minutes = config.agentIdleSeconds / 60;
  const goal = (t: Target) => (layout.targets ? t : undefined);
  const source = before.source === 'proc'
    ? 'RSS from /proc/<pid>/status (VmRSS): the server\'s /metrics has no process_resident_memory_bytes'
    : 'RSS from the server\'s process_resident_memory_bytes';
  ctx.record({
    figure: mark(`server RSS per idle agent (${count})`), value: perAgent(during.bytes, before.bytes), unit: 'KiB',
    target: goal({ on: 'value', op: '<=', limit: 128 }),
    note: [`${layout.connections} mTLS HTTP/2 connection${layout.connections === 1 ? '' : 's'} per agent`, ...(layout.targets ? [source] : [])].join('; '),
  });
  ctx.record({ figure: mark(`server RSS with ${count} agents`), value: during.bytes / MiB, unit: 'MiB', baseline: { label: 'no agent', value: before.bytes / MiB } });
  ctx.record({ figure: mark('server RSS after they left'), value: after.bytes / MiB, unit: 'MiB', baseline: { label: 'no agent', value: before.bytes / MiB }, target: goal({ on: 'ratio', op: '<=', limit: 1.25 }) });
  ctx.record({ figure: mark(`server CPU, ${count} agents idle`), value: withAgents.percent, unit: '% core', baseline: { label: 'no agent', value: base.percent } });
  ctx.record({ figure: mark('server CPU per 1,000 idle agents'), value: ((withAgents.percent - base.percent) * 1000) / count, unit: '% core', target: goal({ on: 'value', op: '<=', limit: 2 }) });
  ctx.record({
    figure: mark('server CPU per idle agent'), value: cpuPerAgentMs / minutes, unit: 'ms/min',
    note: layout.targets ? `${config.agentIdleSeconds} s windows, with the agents and with none; CPU time from /proc/<pid>/stat, in 10 ms ticks` : undefined,
  });
  ctx.record({
    figure: mark('agents connected per second'), value: connected / connectSeconds, unit: 'agents/s',
    note: layout.targets ? `${CONNECT_CONCURRENCY} connecting at once, a full mTLS handshake on each connection` : undefined,
  });
  ctx.record({
    figure: mark('in-process agent RSS per agent'), value: perAgent(helpersDuring, helpersBefore), unit: 'KiB',
    note: layout.targets ? `${count} TunnelAgents in ${processes} process${processes === 1 ? '' : 'es'}: what an agent's objects and connections take, not a tunnel-agent process` : undefined,
  });
}

export const agents: Scenario = {
  name: 'agents',
  title: 'server cost per idle agent',
  plan: (config) => LAYOUTS.flatMap((layout) => steps(config, layout)),

  async run(ctx: Context) {
    const { config } = ctx;
    const notes: string[] = [];
    let count = config.agents;
    if (config.fdLimit < FDS_PER_AGENT * count + FD_HEADROOM) {
      const reduced = Math.max(50, Math.floor((config.fdLimit - FD_HEADROOM) / FDS_PER_AGENT / 50) * 50);
      notes.push(`open-files limit (ulimit -n) is ${config.fdLimit}, which the tunnel server inherits: connected ${reduced} agents instead of ${count}`);
      ctx.info(`ulimit -n is ${config.fdLimit}: too low for ${count} agents (${FDS_PER_AGENT} connections each), using ${reduced}`);
      count = reduced;
    }
    for (const layout of LAYOUTS) await measure(ctx, layout, count, notes);
    if (notes.length > 0) ctx.record({ figure: 'problems', value: notes.length, unit: '', note: notes.join('; ') });
  },
};
