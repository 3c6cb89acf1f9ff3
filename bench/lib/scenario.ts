/**
 * What a scenario is and what it gets to run with.
 */
import type { Figure, FigureInput, Progress } from './results.js';
import type { Scope } from './scope.js';
import type { ReferenceBinaries } from './reference.js';
import { MiB } from './measure.js';

export interface Config {
  full: boolean;
  bulkBytes: number;
  /** Throughput rounds (bulk, aggregate): the paths take turns round after round, and each figure is the median round. */
  rounds: number;
  aggregateBytes: number;
  aggregateConnections: number;
  churnSeconds: number;
  /** Cycles each churn path runs before it is measured (see churn.ts). */
  churnWarmupCycles: number;
  churnConcurrency: number;
  memoryConnections: number;
  /** Idle agents on one server, each its own cluster, certificate and connections (agents scenario). */
  agents: number;
  /** How long the server's CPU is measured, with those agents idle and with none. */
  agentIdleSeconds: number;
  holBytesEach: number;
  holConnections: number;
  wanBytes: number;
  wanDelayMs: number;
  /** Upper bound on any single timed transfer; a transfer cut short reports what got through. */
  transferLimitMs: number;
  /** The process's open-files limit (soft), which the tunnel binaries inherit. */
  fdLimit: number;
  /** The reference's binaries (--reference DIR): churn measures them as one more path. */
  reference?: ReferenceBinaries;
}

/**
 * `scale` (TUNNEL_BENCH_SCALE, for development) multiplies sizes, durations and the number of
 * idle connections and agents; 1 is the real benchmark.
 */
export function makeConfig(full: boolean, fdLimit: number, scale = 1, reference?: ReferenceBinaries): Config {
  const bytes = (n: number) => Math.max(MiB, Math.round(n * scale));
  return {
    full,
    bulkBytes: bytes(full ? 1024 * MiB : 256 * MiB),
    rounds: full ? 3 : 1,
    aggregateBytes: bytes(full ? 1024 * MiB : 256 * MiB),
    aggregateConnections: 100,
    churnSeconds: Math.max(0.5, (full ? 15 : 5) * scale),
    churnWarmupCycles: Math.max(100, Math.round(4_000 * scale)),
    churnConcurrency: 32,
    memoryConnections: Math.max(100, Math.round((full ? 10_000 : 2_000) * scale)),
    agents: Math.max(50, Math.round((full ? 2_000 : 1_000) * scale)),
    // A whole period of the server's 30 s keepalive pings (60 s: of the agents' too).
    agentIdleSeconds: Math.max(2, (full ? 60 : 30) * scale),
    holBytesEach: bytes(full ? 256 * MiB : 64 * MiB),
    holConnections: 10,
    wanBytes: bytes(full ? 1024 * MiB : 256 * MiB),
    wanDelayMs: 25,
    transferLimitMs: full ? 120_000 : 25_000,
    fdLimit,
    reference,
  };
}

export interface Context {
  config: Config;
  scope: Scope;
  /** Prints `[i/n] scenario: label ...` to stderr. */
  step(label: string): void;
  /** An indented detail line under the current step. */
  info(text: string): void;
  record(figure: FigureInput): Figure;
  /** Figures other scenarios recorded in this run, by key (e.g. 'bulk.download.http-connect'). */
  shared: Map<string, number>;
  progress: Progress;
}

export interface Scenario {
  name: string;
  title: string;
  /** The step labels the scenario will print, for the progress counter. */
  plan(config: Config): string[];
  run(ctx: Context): Promise<void>;
}
