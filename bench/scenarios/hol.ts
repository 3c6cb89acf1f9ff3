/**
 * 5. hol: head-of-line isolation. One tunneled connection whose client stops reading while
 * the target keeps sending, beside 10 downloading connections; their aggregate throughput
 * against the same 10 alone, through the same tunnel in the same run.
 */
import { startTarget } from '../lib/helpers.js';
import { httpConnectDialer, type Conn, type Dialer } from '../lib/dialers.js';
import { download, mbps, now, pool, sleep, formatBytes, MiB, type Transfer } from '../lib/measure.js';
import { header } from '../lib/protocol.js';
import { startTunnel } from '../lib/tunnel.js';
import type { Context, Scenario } from '../lib/scenario.js';
import type { Scope } from '../lib/scope.js';
import { Received, mismatch, offsets, payload } from '../lib/content.js';
import { integrityFailure, rethrowIntegrity } from '../lib/integrity.js';

const RATIO_TARGET = 0.8;
/** Effectively endless: the stalled connection's target never runs out of bytes to send. */
const ENDLESS = 2 ** 50;
const STALL_SETTLE_MS = 1_500;
/** After the measurement the stalled reader resumes; this much must then flow within 3 s. */
const RESUME_CHECK_BYTES = 16 * MiB;
/** Where the stalled connection's bytes start in the stream: not where any download's do. */
const STALLED_OFFSET = 12_345;

interface Group {
  rate: number;
  seconds: number;
  note?: string;
}

async function downloadGroup(scope: Scope, dialer: Dialer, count: number, bytesEach: number, limitMs: number): Promise<Group> {
  const conns: Conn[] = [];
  scope.defer('hol downloads', () => { for (const c of conns) c.destroy(); });
  try {
    await pool(count, count, async () => { conns.push(await dialer.dial()); });
    const payloads = offsets(count).map((offset) => payload(bytesEach, offset));
    const start = now();
    const results = await Promise.allSettled(conns.map((c, i) => download(c, payloads[i], limitMs)));
    const seconds = (now() - start) / 1000;
    for (const r of results) if (r.status === 'rejected') rethrowIntegrity(r.reason);
    const done = results.filter((r): r is PromiseFulfilledResult<Transfer> => r.status === 'fulfilled').map((r) => r.value);
    const bytes = done.reduce((n, t) => n + t.bytes, 0);
    const problems = [
      done.length < count ? `${count - done.length} downloads failed` : '',
      done.some((t) => !t.complete) ? `cut short by the ${limitMs / 1000} s limit after ${formatBytes(bytes)} of ${formatBytes(bytesEach * count)}` : '',
    ].filter(Boolean);
    return { rate: mbps({ bytes, seconds }), seconds, note: problems.join('; ') || undefined };
  } finally {
    for (const c of conns) c.destroy();
  }
}

export const hol: Scenario = {
  name: 'hol',
  title: 'head-of-line isolation',
  plan: (config) => ['start target and tunnel', 'warm up', `${config.holConnections} downloads alone`, 'stall one connection',
    `${config.holConnections} downloads beside the stalled one`, 'resume the stalled connection', `${config.holConnections} downloads alone, again`],

  async run(ctx: Context) {
    const { config, scope } = ctx;
    const n = config.holConnections;
    ctx.step('start target and tunnel');
    const target = await startTarget(scope);
    const tunnel = await startTunnel(scope);
    const dialer = httpConnectDialer(tunnel, target);

    ctx.step('warm up');
    await downloadGroup(scope, dialer, n, 4 * MiB, config.transferLimitMs);

    // Alone, beside the stalled one, alone again: the baseline is the mean of the two alone
    // runs, so a drift of the machine's speed during the scenario does not bias the ratio.
    ctx.step(`${n} downloads alone (${formatBytes(config.holBytesEach)} each)`);
    const alone1 = await downloadGroup(scope, dialer, n, config.holBytesEach, config.transferLimitMs);
    ctx.info(`${alone1.rate.toFixed(1)} MB/s (${alone1.seconds.toFixed(2)} s)`);

    ctx.step('stall one connection');
    const stalled = await dialer.dial();
    scope.defer('stalled connection', () => stalled.destroy());
    stalled.on('error', () => undefined);
    stalled.pause();
    stalled.write(header('D', ENDLESS, STALLED_OFFSET));
    await sleep(STALL_SETTLE_MS); // let its window and the socket buffers fill up

    ctx.step(`${n} downloads beside the stalled one`);
    const beside = await downloadGroup(scope, dialer, n, config.holBytesEach, config.transferLimitMs);
    ctx.info(`${beside.rate.toFixed(1)} MB/s (${beside.seconds.toFixed(2)} s)`);

    ctx.step('resume the stalled connection');
    const resumed = new Received();
    stalled.on('data', (chunk: Buffer) => resumed.update(chunk));
    stalled.resume();
    const deadline = now() + 3_000;
    while (now() < deadline && resumed.bytes < RESUME_CHECK_BYTES) await sleep(50);
    stalled.destroy();
    const flowing = resumed.bytes;
    // Everything it held through the stall, and what followed, in order.
    const problem = mismatch('the stalled connection, after it resumed', { bytes: flowing, sha256: resumed.digest() }, payload(flowing, STALLED_OFFSET));
    if (problem) throw integrityFailure(problem);
    ctx.info(`the stalled connection delivered ${formatBytes(flowing)} within 3 s of resuming, intact`);

    ctx.step(`${n} downloads alone, again`);
    const alone2 = await downloadGroup(scope, dialer, n, config.holBytesEach, config.transferLimitMs);
    ctx.info(`${alone2.rate.toFixed(1)} MB/s (${alone2.seconds.toFixed(2)} s)`);
    const alone = (alone1.rate + alone2.rate) / 2;

    ctx.record({
      figure: `${n} downloads alone (mean of 2)`,
      value: alone,
      unit: 'MB/s',
      note: [`alone before: ${alone1.rate.toFixed(1)} MB/s, after: ${alone2.rate.toFixed(1)} MB/s`, alone1.note, alone2.note].filter(Boolean).join('; '),
    });
    ctx.record({
      figure: `${n} downloads beside a stalled one`,
      value: beside.rate,
      unit: 'MB/s',
      baseline: { label: 'alone', value: alone },
      target: { on: 'ratio', op: '>=', limit: RATIO_TARGET },
      note: [beside.note, flowing < RESUME_CHECK_BYTES ? `after resuming, the stalled connection delivered only ${formatBytes(flowing)} in 3 s` : ''].filter(Boolean).join('; ') || undefined,
    });
  },
};
