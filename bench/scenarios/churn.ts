/**
 * 3. churn: cycles of dial, 1 KiB request, 1 KiB response, close; one at a time and 32 at a
 * time for a fixed duration. Through HTTP-CONNECT every cycle pays an mTLS handshake: a full
 * one as kube-apiserver's dialer does (it resumes no sessions), and a resumed one from a
 * client that offers its last session to a server started with --tls-resumption.
 * Baselines: the same cycles in plain TCP, directly and through the relay, and through a relay
 * that terminates mTLS with the same certificates and full handshakes (the handshake's own
 * cost, with no tunnel). Both HTTP-CONNECT rows are measured against that relay.
 * Given the reference's binaries (--reference), the reference server and agent are two more
 * paths, full and resumed handshakes (Go resumes sessions by default), and each of our
 * HTTP-CONNECT rows is also put against the reference's.
 */
import { startRelay, startTarget, startTlsRelay } from '../lib/helpers.js';
import { tcpDialer, tlsDialer, httpConnectDialer, referenceConnectDialer, type Conn, type Dialer } from '../lib/dialers.js';
import { startReference } from '../lib/reference.js';
import { now, percentile, requestResponse, KiB } from '../lib/measure.js';
import { clientSide, startTunnel, startTunnelAgent, startTunnelServer } from '../lib/tunnel.js';
import { cpuMeter, formatCpu, formatCpuPer, type CpuUse } from '../lib/cpu.js';
import type { Context, Scenario } from '../lib/scenario.js';
import { rethrowIntegrity } from '../lib/integrity.js';

const SIZE = KiB;
const CYCLE_LIMIT_MS = 10_000;
/**
 * Each path runs config.churnWarmupCycles (4,000) before it is measured, so that the figures
 * are of warmed-up processes, as a long-running server's are. V8 optimizes a function once it
 * has run often enough, and a cycle runs the code of a connection's whole life once: from a
 * fresh start, one at a time through the tunnel went from 210 to 280 cycles/s over its first
 * 4,000 cycles (about 15 s), and through the mTLS relay from 311 to 355, then stayed there.
 * WARMUP_LIMIT_S bounds a warm-up on a path too slow to finish it (it is then measured as it is).
 */
const WARMUP_LIMIT_S = 30;
const RESUMED = 'HTTP-CONNECT, resumed TLS';
const REFERENCE = 'reference';
const REFERENCE_RESUMED = 'reference, resumed TLS';
/** What each path is compared with: one more hop, then the same hop with mTLS, then the tunnels. */
const BASELINE_OF: Record<string, string | undefined> = {
  relay: 'direct', 'mTLS relay': 'relay', 'HTTP-CONNECT': 'mTLS relay', [RESUMED]: 'mTLS relay', [REFERENCE]: 'mTLS relay', [REFERENCE_RESUMED]: 'mTLS relay',
};
/** Ours against the reference, full handshakes and resumed ones, when it is measured. */
const REFERENCE_OF: Record<string, string> = { 'HTTP-CONNECT': REFERENCE, [RESUMED]: REFERENCE_RESUMED };
/** Tunnel / mTLS relay: with full handshakes as fast as the relay, less a tenth; resumed half as fast again. */
const TARGET_RATIO: Record<string, number | undefined> = { 'HTTP-CONNECT': 0.9, [RESUMED]: 1.5 };

export interface ChurnResult {
  cycles: number;
  errors: number;
  firstError?: string;
  seconds: number;
  latenciesMs: number[];
  cpu: CpuUse[];
}

/** Runs cycles of dial, 1 KiB request/response and close through `dialer` (see `cycles`). */
function churn(dialer: Dialer, concurrency: number, seconds: number, maxCycles = Number.POSITIVE_INFINITY): Promise<ChurnResult> {
  return cycles(dialer.pids, concurrency, seconds, maxCycles, async (n) => {
    let conn: Conn | undefined;
    try {
      conn = await dialer.dial();
      await requestResponse(conn, SIZE, CYCLE_LIMIT_MS, n * SIZE);
    } finally {
      conn?.destroy();
    }
  });
}

/**
 * Runs `cycle` on `concurrency` workers for `seconds`, or until `maxCycles` have started,
 * with the CPU time of `pids` over the run. Errors are counted (and bounded: a broken path
 * stops early); a lost or changed byte ends the run.
 */
export async function cycles(pids: Record<string, number>, concurrency: number, seconds: number, maxCycles: number, cycle: (n: number) => Promise<void>): Promise<ChurnResult> {
  const result: ChurnResult = { cycles: 0, errors: 0, seconds: 0, latenciesMs: [], cpu: [] };
  const meter = cpuMeter(pids);
  const start = now();
  const deadline = start + seconds * 1000;
  let started = 0;
  const worker = async () => {
    while (now() < deadline && result.errors < 1000 && started++ < maxCycles) {
      const t0 = now();
      try {
        await cycle(started);
        result.latenciesMs.push(now() - t0);
        result.cycles++;
      } catch (err) {
        rethrowIntegrity(err);
        result.errors++;
        result.firstError ??= (err as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  result.seconds = (now() - start) / 1000;
  result.cpu = meter();
  return result;
}

/** Rate, p50 and p99 of a run, and its failures and CPU in words. */
export function summarize(r: ChurnResult): { rate: number | null; p50: number | null; p99: number | null; failed: string; cpu: string; line: string } {
  const rate = r.cycles > 0 ? r.cycles / r.seconds : null;
  const p50 = r.cycles > 0 ? percentile(r.latenciesMs, 50) : null;
  const p99 = r.cycles > 0 ? percentile(r.latenciesMs, 99) : null;
  const failed = r.errors > 0 ? `${r.errors} failed cycles (first: ${r.firstError})` : '';
  const cpu = r.cycles > 0 ? `CPU: ${formatCpu(r.cpu)}; per cycle: ${formatCpuPer(r.cpu, r.cycles)}` : '';
  const line = `${rate?.toFixed(0) ?? 'n/a'} cycles/s, p50 ${p50?.toFixed(2) ?? 'n/a'} ms, p99 ${p99?.toFixed(2) ?? 'n/a'} ms (${r.cycles} cycles${failed ? `; ${failed}` : ''}); ${cpu}`;
  return { rate, p50, p99, failed, cpu, line };
}

export const churnScenario: Scenario = {
  name: 'churn',
  title: 'connection churn',
  plan: (config) => ['start target, relays and tunnel', 'warm up',
    ...[1, config.churnConcurrency].flatMap((c) => ['direct', 'relay', 'mTLS relay', 'HTTP-CONNECT', RESUMED, ...(config.reference ? [REFERENCE, REFERENCE_RESUMED] : [])]
      .map((p) => `${p}, ${c} at a time`))],

  async run(ctx: Context) {
    const { config, scope } = ctx;
    ctx.step('start target, relays and tunnel');
    const target = await startTarget(scope);
    const relay = await startRelay(scope, target.port);
    const tunnel = await startTunnel(scope);
    const tlsRelay = await startTlsRelay(scope, target.port, tunnel.ws.pki);
    // A second server, and its agent, that resume TLS sessions (same workspace and PKI).
    const resumingServer = await startTunnelServer(scope, tunnel.ws, ['--tls-resumption', `--uds-name=${tunnel.ws.dir}/grpc-resuming.sock`]);
    const resumingAgent = await startTunnelAgent(scope, tunnel.ws, resumingServer.agentPort);
    const resuming = { ...tunnel, server: resumingServer, agent: resumingAgent, ...(await clientSide(scope, tunnel.ws, resumingServer)) };
    const dialers = [
      tcpDialer('direct', target),
      tcpDialer('relay', target, relay),
      tlsDialer('mTLS relay', target, tlsRelay, tunnel.clientTls),
      httpConnectDialer(tunnel, target, 'HTTP-CONNECT', { resumeSessions: false }),
      httpConnectDialer(resuming, target, RESUMED, { resumeSessions: true }),
    ];
    if (config.reference) {
      const reference = await startReference(scope, config.reference, tunnel.ws.pki);
      dialers.push(
        referenceConnectDialer(reference, target, tunnel.clientTls, REFERENCE, { resumeSessions: false }),
        referenceConnectDialer(reference, target, tunnel.clientTls, REFERENCE_RESUMED, { resumeSessions: true }),
      );
    }

    ctx.step(`warm up (${config.churnWarmupCycles} cycles per path, ${config.churnConcurrency} at a time)`);
    for (const dialer of dialers) {
      const warm = await churn(dialer, config.churnConcurrency, WARMUP_LIMIT_S, config.churnWarmupCycles);
      ctx.info(`${dialer.label}: ${warm.cycles} cycles in ${warm.seconds.toFixed(1)} s`);
    }

    for (const concurrency of [1, config.churnConcurrency]) {
      const by = new Map<string, { rate: number | null; p50: number | null; p99: number | null }>();
      for (const dialer of dialers) {
        ctx.step(`${dialer.label}, ${concurrency} at a time (${config.churnSeconds} s)`);
        const { rate, p50, p99, failed, cpu, line } = summarize(await churn(dialer, concurrency, config.churnSeconds));
        by.set(dialer.label, { rate, p50, p99 });
        ctx.info(line);
        const baselineLabel = BASELINE_OF[dialer.label];
        const base = baselineLabel ? by.get(baselineLabel) : undefined;
        const ratioTarget = TARGET_RATIO[dialer.label];
        // The tunnels' rows (ours and the reference's) say where each cycle's CPU went.
        const isTunnel = baselineLabel === 'mTLS relay';
        const note = [failed, isTunnel ? cpu : ''].filter(Boolean).join('; ') || undefined;
        ctx.record({
          figure: `${dialer.label}, ${concurrency} at a time: rate`,
          value: rate,
          unit: 'cycles/s',
          baseline: base ? { label: baselineLabel!, value: base.rate } : undefined,
          target: ratioTarget !== undefined ? { on: 'ratio', op: '>=', limit: ratioTarget } : undefined,
          note,
        });
        ctx.record({ figure: `${dialer.label}, ${concurrency} at a time: p50`, value: p50, unit: 'ms', baseline: base ? { label: baselineLabel!, value: base.p50 } : undefined });
        ctx.record({ figure: `${dialer.label}, ${concurrency} at a time: p99`, value: p99, unit: 'ms', baseline: base ? { label: baselineLabel!, value: base.p99 } : undefined });
      }
      for (const [ours, theirs] of Object.entries(REFERENCE_OF)) {
        const reference = by.get(theirs);
        if (!reference) continue;
        ctx.record({ figure: `${ours}, ${concurrency} at a time: rate against the reference`, value: by.get(ours)?.rate ?? null, unit: 'cycles/s', baseline: { label: theirs, value: reference.rate } });
      }
    }
  },
};
