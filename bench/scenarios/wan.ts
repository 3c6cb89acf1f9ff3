/**
 * 6. wan: the agent reaches the server through a relay that adds 25 ms each way (a WAN link
 * without a bandwidth limit). Bulk download through HTTP-CONNECT, against the same download
 * through the delay relay alone (client -> delay relay -> target): the link's own capacity.
 */
import { startDelayRelay, startTarget } from '../lib/helpers.js';
import { tcpDialer, httpConnectDialer } from '../lib/dialers.js';
import { formatBytes, MiB } from '../lib/measure.js';
import { clientSide, startTunnelAgent, startTunnelServer, startWorkspace } from '../lib/tunnel.js';
import type { Context, Scenario } from '../lib/scenario.js';
import type { FigureInput } from '../lib/results.js';
import { measureTransfer, timedTransfer } from './bulk.js';

const RATIO_TARGET = 0.5;
/** The per-connection window an operator would give a 50 ms link: about its bandwidth-delay product. */
const LONG_LINK_WINDOW = 64 * MiB;
const WARMUP_BYTES = 4 * MiB;
/** Uploads are an extra figure (no target): small, since the server -> agent direction may be slow. */
const UPLOAD_BYTES = { quick: 8 * MiB, full: 32 * MiB };

export const wan: Scenario = {
  name: 'wan',
  title: 'agent behind a high-latency link',
  plan: () => ['start target, delay relays and tunnel (agent via delay relay)', 'warm up', 'download via the delay relay alone', 'download via HTTP-CONNECT, agent behind the delay relay',
    'upload via the delay relay alone', 'upload via HTTP-CONNECT, agent behind the delay relay', 'the same download with a window for the long link'],

  async run(ctx: Context) {
    const { config, scope } = ctx;
    const delay = config.wanDelayMs;
    ctx.step('start target, delay relays and tunnel (agent via delay relay)');
    const target = await startTarget(scope);
    const direct = await startDelayRelay(scope, target.port, delay, 'delay relay (baseline)');
    const ws = await startWorkspace(scope);
    /** A server and an agent that reaches it through its own delay relay. */
    const tunnelBehindLink = async (label: string, flags: string[] = []) => {
      const server = await startTunnelServer(scope, ws, flags);
      const link = await startDelayRelay(scope, server.agentPort, delay, `delay relay (agent link${flags.length ? `, ${flags.join(' ')}` : ''})`);
      const agent = await startTunnelAgent(scope, ws, link.port, flags);
      const dialer = httpConnectDialer({ ws, server, agent, ...(await clientSide(scope, ws, server)) }, target, label);
      dialer.pids = { ...dialer.pids, link: link.pid };
      return dialer;
    };
    const paths = [tcpDialer('delay relay alone', target, { ...direct, name: 'relay' }), await tunnelBehindLink('HTTP-CONNECT via delay relay')];

    ctx.step('warm up');
    for (const dialer of paths) await timedTransfer(dialer, 'download', WARMUP_BYTES, config.transferLimitMs);

    /** Each path in turn; the tunnel's figure against the delay relay's. */
    const measurePaths = async (direction: 'download' | 'upload', bytes: number, what: string, target?: FigureInput['target']) => {
      const rates: Array<number | null> = [];
      for (const [i, dialer] of paths.entries()) {
        ctx.step(`${direction} via ${dialer.label} (${formatBytes(bytes)}, ${what})`);
        const { rate, note } = await measureTransfer(ctx, dialer, direction, bytes);
        rates.push(rate);
        ctx.record({
          figure: `${direction} via ${dialer.label}`,
          value: rate,
          unit: 'MB/s',
          baseline: i === 1 ? { label: 'delay relay', value: rates[0] ?? null } : undefined,
          target: i === 1 ? target : undefined,
          note,
        });
      }
      return rates;
    };
    const rates = await measurePaths('download', config.wanBytes, `+${delay} ms each way`, { on: 'ratio', op: '>=', limit: RATIO_TARGET });
    await measurePaths('upload', Math.min(config.wanBytes, config.full ? UPLOAD_BYTES.full : UPLOAD_BYTES.quick), 'no target');

    // What an operator gets by sizing --connection-window to the link, on both ends.
    ctx.step(`the same download with --connection-window=${LONG_LINK_WINDOW}`);
    const wide = await tunnelBehindLink('HTTP-CONNECT via delay relay, 64 MiB window', [`--connection-window=${LONG_LINK_WINDOW}`]);
    await timedTransfer(wide, 'download', WARMUP_BYTES, config.transferLimitMs);
    const widened = await measureTransfer(ctx, wide, 'download', config.wanBytes);
    ctx.record({
      figure: `download via ${wide.label}`,
      value: widened.rate,
      unit: 'MB/s',
      baseline: { label: 'delay relay', value: rates[0] ?? null },
      note: `--connection-window=${LONG_LINK_WINDOW} on server and agent${widened.note ? `; ${widened.note}` : ''}`,
    });

    // Separates what the latency costs from the tunnel's own limit on loopback.
    const loopback = ctx.shared.get('bulk.download.HTTP-CONNECT');
    if (loopback !== undefined && rates[1] !== null && rates[1] !== undefined) {
      ctx.record({
        figure: 'HTTP-CONNECT via delay relay vs on loopback',
        value: rates[1],
        unit: 'MB/s',
        baseline: { label: 'loopback, bulk', value: loopback },
      });
    }
  },
};
