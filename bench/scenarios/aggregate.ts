/**
 * 2. aggregate: 100 concurrent downloads through HTTP-CONNECT sharing the total size,
 * against the single-connection HTTP-CONNECT download of the bulk scenario (measured here
 * when bulk did not run).
 */
import { startTarget } from '../lib/helpers.js';
import { httpConnectDialer, type Conn } from '../lib/dialers.js';
import { download, mbps, formatBytes, now, pool, type Transfer } from '../lib/measure.js';
import { startTunnel } from '../lib/tunnel.js';
import type { Context, Scenario } from '../lib/scenario.js';
import { timedTransfer, transferNote } from './bulk.js';
import { cpuMeter, formatCpu } from '../lib/cpu.js';

const RATIO_TARGET = 0.9;
const BULK_KEY = 'bulk.download.HTTP-CONNECT';

export const aggregate: Scenario = {
  name: 'aggregate',
  title: 'aggregate throughput, many connections',
  plan: (config, selected) => [
    'start target and tunnel',
    ...(selected.includes('bulk') ? [] : ['single-connection download via HTTP-CONNECT']),
    `dial ${config.aggregateConnections} connections`,
    `${config.aggregateConnections} concurrent downloads`,
  ],

  async run(ctx: Context) {
    const { config, scope } = ctx;
    const count = config.aggregateConnections;
    ctx.step('start target and tunnel');
    const target = await startTarget(scope);
    const tunnel = await startTunnel(scope);
    const dialer = httpConnectDialer(tunnel, target);

    let single = ctx.shared.get(BULK_KEY) ?? null;
    let singleLabel = '1 conn, bulk';
    if (single === null) {
      ctx.step('single-connection download via HTTP-CONNECT');
      singleLabel = '1 conn, here';
      await timedTransfer(dialer, 'download', 16 * 1024 * 1024, config.transferLimitMs); // warm-up
      const t = await timedTransfer(dialer, 'download', config.bulkBytes, config.transferLimitMs);
      single = mbps(t);
      ctx.info(`${single.toFixed(1)} MB/s`);
    }

    ctx.step(`dial ${count} connections`);
    const conns: Conn[] = [];
    scope.defer('aggregate connections', () => { for (const c of conns) c.destroy(); });
    await pool(count, 20, async () => { conns.push(await dialer.dial()); });

    ctx.step(`${count} concurrent downloads (${formatBytes(config.aggregateBytes)} in all)`);
    const each = Math.floor(config.aggregateBytes / count);
    const sizes = conns.map((_, i) => each + (i < config.aggregateBytes - each * count ? 1 : 0));
    const start = now();
    const meter = cpuMeter(dialer.pids);
    const results = await Promise.allSettled(conns.map((c, i) => download(c, sizes[i]!, config.transferLimitMs)));
    const seconds = (now() - start) / 1000;
    const cpu = formatCpu(meter());
    const done = results.filter((r): r is PromiseFulfilledResult<Transfer> => r.status === 'fulfilled').map((r) => r.value);
    const failed = results.length - done.length;
    const bytes = done.reduce((n, t) => n + t.bytes, 0);
    const short = done.filter((t) => !t.complete).length;
    const rate = mbps({ bytes, seconds });
    const notes = [
      failed > 0 ? `${failed} of ${count} downloads failed (${(results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason})` : '',
      short > 0 ? transferNote({ bytes, seconds, complete: false }, config.aggregateBytes, config.transferLimitMs) ?? '' : '',
      singleLabel.endsWith('here') ? 'the bulk scenario did not run: the single-connection baseline was measured in this scenario' : '',
      `CPU while transferring: ${cpu}`,
    ].filter(Boolean);
    ctx.info(`${rate.toFixed(1)} MB/s (${seconds.toFixed(2)} s); CPU: ${cpu}`);
    ctx.record({
      figure: `download, ${count} connections`,
      value: rate,
      unit: 'MB/s',
      baseline: { label: singleLabel, value: single },
      target: { on: 'ratio', op: '>=', limit: RATIO_TARGET },
      note: notes.join('; ') || undefined,
    });
    const perConn = done.map((t) => mbps(t)).sort((a, b) => a - b);
    if (perConn.length > 0) {
      ctx.record({
        figure: 'slowest / fastest connection',
        value: perConn[0]!,
        unit: 'MB/s',
        baseline: { label: 'fastest', value: perConn[perConn.length - 1]! },
      });
    }
  },
};
