#!/usr/bin/env node
/**
 * The benchmark: runs each scenario against our tunnel (the real binaries as child
 * processes) and its baselines in the same run, then prints a table of figures, baselines,
 * ratios and targets. Every connection's bytes are checked where they arrive (length and
 * sha256); one that lost or changed a byte voids the run and makes the exit status 1. A
 * missed target is reported, not failed: otherwise the exit status is 0 unless the bench
 * itself could not run.
 */
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { fdLimits, reexecForBench } from './lib/limits.js';
import { makeFigure, Progress, renderTable, type Figure } from './lib/results.js';
import { makeConfig, type Context, type Scenario } from './lib/scenario.js';
import { installExitHandlers, reapLeftovers, Scope } from './lib/scope.js';
import { BINARY_RUNTIME } from '../harness/processes.js';
import { nativeHeapRelease } from '../lib/observe/native-heap.js';
import { integrityFailures } from './lib/integrity.js';
import { referenceBinaries } from './lib/reference.js';
import { bulk } from './scenarios/bulk.js';
import { aggregate } from './scenarios/aggregate.js';
import { churnScenario } from './scenarios/churn.js';
import { dials } from './scenarios/dials.js';
import { phases } from './scenarios/phases.js';
import { memory } from './scenarios/memory.js';
import { hol } from './scenarios/hol.js';
import { wan } from './scenarios/wan.js';
import { rotation } from './scenarios/rotation.js';
import { push } from './scenarios/push.js';
import { restart } from './scenarios/restart.js';
import { agents } from './scenarios/agents.js';

const SCENARIOS: Scenario[] = [bulk, aggregate, churnScenario, phases, dials, memory, hol, wan, rotation, push, restart, agents];

const HELP = `usage: node dist/bench/run.js [--full] [--json FILE] [--only NAME[,NAME]] [--reference DIR] [--help]

Measures the tunnel (tunnel-server and tunnel-agent as child processes, fresh local PKI per
scenario) against baselines measured in the same run, and prints a table:
scenario, figure, value, baseline, ratio, target, ok?. Missed targets are marked MISS; the
exit status is still 0 (a measurement, not a test). MB/s means 10^6 bytes per second.

Every transfer on every path is checked where it arrives: length and sha256 per connection
(downloads end with the target closing right after its last byte). A connection that lost
or changed a byte fails its scenario, voids every verdict of the run (VOID), is listed under
DATA INTEGRITY FAILED, and makes the exit status 1.

  --full         long runs (1 GiB transfers, 10,000 idle connections, 15 s churn,
                 2,000 idle agents)
  --json FILE    also write every figure with its baseline, ratio and target as JSON
  --only LIST    run only these scenarios (comma-separated), in the usual order
  --reference DIR
                 also measure the reference (apiserver-network-proxy's server and agent,
                 built from its release tag into DIR as \`server\` and \`agent\`) in churn,
                 with the same certificates: its HTTP-CONNECT rows, and ours against it
  --help         this text

TUNNEL_BENCH_SCALE=F in the environment multiplies sizes, durations and connection counts
(for development, e.g. 0.1); the figures are then not comparable with the targets' intent.

scenarios (quick / --full):
  bulk       one connection, download and upload, 256 MiB / 1 GiB: direct TCP, one-hop
             relay, HTTP-CONNECT (mTLS both hops), gRPC frontend (unix socket).
             target: tunnel / relay >= 0.3
  aggregate  100 connections through HTTP-CONNECT sharing 256 MiB / 1 GiB of downloads.
             target: aggregate / single connection >= 0.9
  churn      dial, 1 KiB request, 1 KiB response, close; 1 and 32 at a time, 5 s / 15 s
             each: HTTP-CONNECT with full TLS handshakes, and with resumed ones (a
             server with --tls-resumption). targets, against the mTLS relay (full
             handshakes): >= 0.9 full, >= 1.5 resumed
  phases     where a churn cycle's time goes, one at a time (TCP, TLS, CONNECT to 200, 1 KiB
             exchange, close, as the client sees them; the server's DIAL_REQ to DIAL_RSP and
             the agent's target connect from their histograms; CPU per cycle): mTLS relay,
             HTTP-CONNECT full and resumed. Each phase against the relay's; no target
  dials      the same cycle on the gRPC frontend (unix socket): a GrpcChannel (one kept
             connection and stream, a DIAL_REQ per tunneled connection) and one-shot dials
             (a connection per dial), against a plain gRPC bidi call on a kept connection.
             targets: channel >= 500 cycles/s (1 at a time), >= 2,000 (32 at a time)
  memory     2,000 / 10,000 idle HTTP-CONNECT connections: server and agent RSS.
             targets: <= 64 KiB (server), <= 16 KiB (agent) per connection; after close
             <= 1.25x the RSS before
  hol        10 downloads of 64 MiB / 256 MiB each beside a connection whose reader stalled,
             against the same 10 alone. target: >= 0.8
  wan        agent behind a relay adding 25 ms each way; 64 MiB / 256 MiB download through
             HTTP-CONNECT against the delay relay alone. target: >= 0.5
  rotation   bulk download through HTTP-CONNECT while server and agent certificates from
             the CSR API rotate every ~2 s, against certificates that last a year.
             target: >= 0.9
  push       push mode to a hub HTTP service, 64 MiB / 256 MiB download and upload, then
             1 KiB GETs on kept-alive connections, 1 and 32 at a time: direct HTTP,
             the server's reverse-proxy port (HTTPS, agent certificate, route /v1/norm),
             the agent's push listener (carried in the tunnel). target: tunnel / direct
             >= 0.3 (transfers; requests/s reported)
  restart    dials (a 2 KiB request in two halves 200 ms apart) from 8 workers through a balancer
             in front of 3 servers, in a steady state (10 s / 30 s) and while each
             server in turn gets SIGTERM, drains and is replaced on the same ports.
             target: 0 accepted dials lost; refusals and p50/p99 dial latency against
             the steady state reported
  agents     1,000 / 2,000 idle agents on one server, each its own cluster, certificate
             and mTLS HTTP/2 connections (TunnelAgent instances in helper processes),
             connected 50 at a time; an echo through every 50th before and after an idle
             window of 30 s / 60 s: server RSS and CPU per idle agent against the same
             server with no agent, RSS after they left, agents connected per second. Twice,
             each on a fresh server: split streams (tunnel-agent's default, 2 connections
             per agent), and one connection per agent (as the reference agent connects).
             targets (split): <= 128 KiB and <= 2% of a core per 1,000 agents (server);
             after they left <= 1.25x the RSS before
`;

function parseCli(argv: string[]) {
  const { values } = parseArgs({
    args: argv,
    options: {
      full: { type: 'boolean', default: false },
      json: { type: 'string' },
      only: { type: 'string' },
      reference: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  const only = values.only?.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = only?.filter((name) => !SCENARIOS.some((s) => s.name === name)) ?? [];
  if (unknown.length > 0) throw new Error(`unknown scenario ${unknown.join(', ')}; known: ${SCENARIOS.map((s) => s.name).join(', ')}`);
  const reference = values.reference === undefined ? undefined : referenceBinaries(values.reference);
  return { full: values.full ?? false, json: values.json, only, reference, help: values.help ?? false };
}

async function main(): Promise<number> {
  let cli;
  try {
    cli = parseCli(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (cli.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const reran = reexecForBench();
  if (reran !== undefined) return reran;

  installExitHandlers();
  const limits = fdLimits();
  const scale = Number(process.env.TUNNEL_BENCH_SCALE ?? 1);
  if (!(scale > 0)) {
    process.stderr.write('TUNNEL_BENCH_SCALE must be a positive number\n');
    return 2;
  }
  const config = makeConfig(cli.full, limits.soft, scale, cli.reference);
  const selected = SCENARIOS.filter((s) => !cli.only || cli.only.includes(s.name));
  const plans = selected.map((s) => s.plan(config));
  const progress = new Progress(plans.reduce((n, p) => n + p.length, 0));
  const figures: Figure[] = [];
  const problems: string[] = [];
  const shared = new Map<string, number>();
  const started = new Date();

  process.stderr.write(`tunnel bench (${cli.full ? 'full' : 'quick'}${scale !== 1 ? `, scale ${scale}` : ''}): ${selected.map((s) => s.name).join(', ')}; node ${process.version} (${process.execArgv.join(' ') || 'no flags'}), ${os.cpus().length} CPUs, ulimit -n ${limits.soft}\n`);
  // The binaries load the same node_modules, so they release (or not) as this process can.
  const heap = nativeHeapRelease();
  const heapRelease = 'release' in heap ? 'malloc_trim after connections close' : `none (${heap.unavailable})`;
  process.stderr.write(`binaries: ${BINARY_RUNTIME.nodeArgs.join(' ')}; allocator: ${BINARY_RUNTIME.preload ? `${BINARY_RUNTIME.preload} (TUNNEL_JEMALLOC)` : 'the C library\'s'}; free pages returned: ${heapRelease}\n`);
  let planned = 0;
  for (const [i, scenario] of selected.entries()) {
    planned += plans[i].length;
    const scope = new Scope();
    const ctx: Context = {
      config,
      scope,
      shared,
      progress,
      step: (label) => progress.step(scenario.name, label),
      info: (text) => progress.info(text),
      record: (input) => {
        const fig = makeFigure(scenario.name, input);
        figures.push(fig);
        return fig;
      },
    };
    try {
      await scenario.run(ctx);
    } catch (err) {
      const message = (err as Error).stack ?? String(err);
      progress.info(`ERROR: ${message}`);
      problems.push(`${scenario.name}: ${(err as Error).message}`);
      figures.push(makeFigure(scenario.name, { figure: 'scenario failed', value: null, unit: '', note: (err as Error).message.split('\n')[0] }));
    } finally {
      const teardown = await scope.close();
      const leftovers = await reapLeftovers();
      for (const p of teardown) problems.push(`${scenario.name}: ${p}`);
      if (leftovers.length > 0) problems.push(`${scenario.name}: left running and killed: ${leftovers.join(', ')}`);
      progress.skipTo(planned);
    }
  }

  // A run that lost or changed a byte anywhere has no results: every verdict is void.
  const lost = integrityFailures();
  const table = renderTable(lost.length > 0 ? figures.map(voided) : figures);
  process.stdout.write(`\n${table}\n`);
  if (problems.length > 0) process.stdout.write(`\nproblems:\n${problems.map((p) => `  ${p}`).join('\n')}\n`);
  if (lost.length > 0) {
    process.stdout.write(`\nDATA INTEGRITY FAILED: ${lost.length} connection(s) lost or changed bytes, so no figure of this run is a result:\n${lost.map((l) => `  ${l}`).join('\n')}\n`);
  }
  if (cli.json) {
    const report = {
      started: started.toISOString(),
      finished: new Date().toISOString(),
      mode: cli.full ? 'full' : 'quick',
      scale,
      node: process.version,
      nodeArgs: process.execArgv,
      binaries: { ...BINARY_RUNTIME, heapRelease },
      cpus: os.cpus().length,
      fdLimit: limits.soft,
      config,
      integrity: { ok: lost.length === 0, failures: lost },
      figures: lost.length > 0 ? figures.map(voided) : figures,
      problems,
    };
    writeFileSync(cli.json, `${JSON.stringify(report, null, 2)}\n`);
    process.stderr.write(`wrote ${cli.json}\n`);
  }
  return lost.length > 0 ? 1 : 0;
}

/** A figure of a run that lost bytes: its target is not met, whatever the number says. */
function voided(fig: Figure): Figure {
  return fig.target ? { ...fig, ok: false, void: true } : fig;
}

main().then((code) => {
  process.exitCode = code;
  // Handles (gRPC channels, timers) of the client library may keep the loop alive; the work is done.
  setTimeout(() => process.exit(code), 200).unref();
}, (err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
