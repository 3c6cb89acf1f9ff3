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
    const server = await startTunnelServer(scope, ws);
    const link = await startDelayRelay(scope, server.agentPort, delay, 'delay relay (agent link)');
    const agent = await startTunnelAgent(scope, ws, link.port);
    const tunnel = { ws, server, agent, ...(await clientSide(scope, ws, server)) };
    const viaTunnel = httpConnectDialer(tunnel, target, 'HTTP-CONNECT via delay relay');
    viaTunnel.pids = { ...viaTunnel.pids, link: link.pid };
    const paths = [tcpDialer('delay relay alone', target, { ...direct, name: 'relay' }), viaTunnel];

    ctx.step('warm up');
    for (const dialer of paths) await timedTransfer(dialer, 'download', WARMUP_BYTES, config.transferLimitMs);

    const rates: Array<number | null> = [];
    for (const [i, dialer] of paths.entries()) {
      ctx.step(`download via ${dialer.label} (${formatBytes(config.wanBytes)}, +${delay} ms each way)`);
      const { rate, note } = await measureTransfer(ctx, dialer, 'download', config.wanBytes);
      rates.push(rate);
      ctx.record({
        figure: `download via ${dialer.label}`,
        value: rate,
        unit: 'MB/s',
        baseline: i === 1 ? { label: 'delay relay', value: rates[0] ?? null } : undefined,
        target: i === 1 ? { on: 'ratio', op: '>=', limit: RATIO_TARGET } : undefined,
        note,
      });
    }
    const uploadBytes = Math.min(config.wanBytes, config.full ? UPLOAD_BYTES.full : UPLOAD_BYTES.quick);
    const uploads: Array<number | null> = [];
    for (const [i, dialer] of paths.entries()) {
      ctx.step(`upload via ${dialer.label} (${formatBytes(uploadBytes)}, no target)`);
      const { rate, note } = await measureTransfer(ctx, dialer, 'upload', uploadBytes);
      uploads.push(rate);
      ctx.record({
        figure: `upload via ${dialer.label}`,
        value: rate,
        unit: 'MB/s',
        baseline: i === 1 ? { label: 'delay relay', value: uploads[0] ?? null } : undefined,
        note,
      });
    }
    // What an operator gets by sizing --connection-window to the link, on both ends.
    ctx.step(`the same download with --connection-window=${LONG_LINK_WINDOW}`);
    const windowFlag = [`--connection-window=${LONG_LINK_WINDOW}`];
    const wideServer = await startTunnelServer(scope, ws, windowFlag);
    const wideLink = await startDelayRelay(scope, wideServer.agentPort, delay, 'delay relay (agent link, wide window)');
    const wideAgent = await startTunnelAgent(scope, ws, wideLink.port, windowFlag);
    const wide = httpConnectDialer({ ws, server: wideServer, agent: wideAgent, ...(await clientSide(scope, ws, wideServer)) }, target, 'HTTP-CONNECT via delay relay, 64 MiB window');
    wide.pids = { ...wide.pids, link: wideLink.pid };
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
