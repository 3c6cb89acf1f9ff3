/**
 * 1. bulk: one connection, download and upload, through HTTP-CONNECT (mTLS on both hops) and
 * the gRPC frontend (unix socket), against direct loopback TCP and a one-hop Node relay.
 * With several rounds (--full), the paths take turns, round after round, so that a noisy
 * spell on the shared machine falls on all of them, and each figure is the median round.
 */
import { startRelay, startTarget } from '../lib/helpers.js';
import { tcpDialer, httpConnectDialer, grpcDialer, type Dialer } from '../lib/dialers.js';
import { download, upload, mbps, formatBytes, medianBy, MiB, type Transfer } from '../lib/measure.js';
import { cpuMeter, formatCpu, type CpuUse } from '../lib/cpu.js';
import { startTunnel } from '../lib/tunnel.js';
import { payload } from '../lib/content.js';
import { rethrowIntegrity } from '../lib/integrity.js';
import type { Context, Scenario } from '../lib/scenario.js';

const DIRECTIONS = ['download', 'upload'] as const;
type Direction = typeof DIRECTIONS[number];
const PATHS = ['direct', 'relay', 'HTTP-CONNECT', 'gRPC (uds)'];
/**
 * Per path and direction before the rounds. With 16 MiB the first round of the download
 * through HTTP-CONNECT ran 5 to 10% below the slower of the next two, in each of four full
 * runs: the processes were still warming up (V8 optimizing).
 */
const WARMUP_BYTES = 64 * MiB;
const RATIO_TARGET = 0.3;

/**
 * One timed transfer on a fresh connection, with the CPU use of the processes on the path.
 * Its bytes are checked where they arrive; lost or changed ones throw an IntegrityError.
 */
export async function timedTransfer(dialer: Dialer, direction: Direction, bytes: number, limitMs: number): Promise<Transfer & { cpu: CpuUse[] }> {
  const expected = payload(bytes);
  const conn = await dialer.dial();
  try {
    const meter = cpuMeter(dialer.pids);
    const t = await (direction === 'download' ? download : upload)(conn, expected, limitMs);
    return { ...t, cpu: meter() };
  } finally {
    conn.destroy();
  }
}

/** Runs a timed transfer and reports it: rate, or null and why not. */
export async function measureTransfer(ctx: Context, dialer: Dialer, direction: Direction, bytes: number): Promise<{ rate: number | null; note?: string; cpu?: string }> {
  const limitMs = ctx.config.transferLimitMs;
  try {
    const t = await timedTransfer(dialer, direction, bytes, limitMs);
    const rate = mbps(t);
    const note = transferNote(t, bytes, limitMs);
    const cpu = formatCpu(t.cpu);
    ctx.info(`${rate.toFixed(1)} MB/s (${t.seconds.toFixed(2)} s); CPU: ${cpu}${note ? `; ${note}` : ''}`);
    return { rate, note, cpu };
  } catch (err) {
    return failedRun(ctx, err);
  }
}

/** A measurement that failed: said and recorded without a rate; lost or changed bytes still void the run. */
export function failedRun(ctx: Context, err: unknown): { rate: null; note: string } {
  rethrowIntegrity(err);
  const note = `failed: ${(err as Error).message}`;
  ctx.info(note);
  return { rate: null, note };
}

export function transferNote(t: Transfer, bytes: number, limitMs: number): string | undefined {
  return t.complete ? undefined : `cut short by the ${limitMs / 1000} s limit after ${formatBytes(t.bytes)} of ${formatBytes(bytes)}; rate is over what got through`;
}

export type Run = Awaited<ReturnType<typeof measureTransfer>>;

/** ', round 2 of 3' and so on; one empty label for a single round. */
export function roundLabels(rounds: number): string[] {
  return rounds > 1 ? Array.from({ length: rounds }, (_, i) => `, round ${i + 1} of ${rounds}`) : [''];
}

/**
 * One transfer of `bytes` on each dialer in turn, round after round (config.rounds), so that a
 * noisy spell of the machine falls on all of them: every dialer's runs, by label.
 */
export async function measureInTurns(ctx: Context, dialers: readonly Dialer[], direction: Direction, bytes: number, detail: string): Promise<Map<string, Run[]>> {
  const runs = new Map<string, Run[]>(dialers.map((d) => [d.label, []]));
  for (const round of roundLabels(ctx.config.rounds)) {
    for (const dialer of dialers) {
      ctx.step(`${direction} via ${dialer.label}${round} (${detail})`);
      runs.get(dialer.label)!.push(await measureTransfer(ctx, dialer, direction, bytes));
    }
  }
  return runs;
}

/** The median of a path's rounds (a failed round counts lowest), and all of them for the note. */
export function medianRun(runs: Run[]): Run & { spread: string } {
  const median = medianBy(runs, (r) => r.rate ?? -1);
  const spread = runs.length > 1 ? `median of ${runs.length} rounds: ${runs.map((r) => (r.rate === null ? 'failed' : r.rate.toFixed(1))).join(', ')} MB/s` : '';
  return { ...median, spread };
}

export const bulk: Scenario = {
  name: 'bulk',
  title: 'bulk transfer, one connection',
  plan: (config) => ['start target, relay and tunnel', 'warm up every path', ...DIRECTIONS.flatMap((d) => roundLabels(config.rounds).flatMap((r) => PATHS.map((p) => `${d} via ${p}${r}`)))],

  async run(ctx: Context) {
    const { config, scope } = ctx;
    ctx.step('start target, relay and tunnel');
    const target = await startTarget(scope);
    const relay = await startRelay(scope, target.port);
    const tunnel = await startTunnel(scope);
    const dialers: Dialer[] = [
      tcpDialer('direct', target),
      tcpDialer('relay', target, relay),
      httpConnectDialer(tunnel, target),
      grpcDialer(tunnel, target),
    ];

    ctx.step('warm up every path');
    for (const dialer of dialers) {
      for (const direction of DIRECTIONS) await timedTransfer(dialer, direction, WARMUP_BYTES, config.transferLimitMs);
    }

    for (const direction of DIRECTIONS) {
      const runs = await measureInTurns(ctx, dialers, direction, config.bulkBytes, formatBytes(config.bulkBytes));
      const rates = new Map<string, number | null>();
      for (const dialer of dialers) {
        const { rate, note, cpu, spread } = medianRun(runs.get(dialer.label)!);
        rates.set(dialer.label, rate);
        const isTunnel = dialer.label !== 'direct' && dialer.label !== 'relay';
        ctx.record({
          figure: `${direction} via ${dialer.label}`,
          value: rate,
          unit: 'MB/s',
          baseline: dialer.label === 'relay' ? { label: 'direct', value: rates.get('direct') ?? null }
            : isTunnel ? { label: 'relay', value: rates.get('relay') ?? null } : undefined,
          target: isTunnel ? { on: 'ratio', op: '>=', limit: RATIO_TARGET } : undefined,
          note: [spread, note, isTunnel && cpu ? `CPU while transferring (100% = one core): ${cpu}` : ''].filter(Boolean).join('; ') || undefined,
        });
        if (rate !== null) ctx.shared.set(`bulk.${direction}.${dialer.label}`, rate);
      }
    }
  },
};
