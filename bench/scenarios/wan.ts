/**
 * 6. wan: the agent reaches the server through a relay that adds 25 ms each way (a WAN link
 * without a bandwidth limit). Bulk download through HTTP-CONNECT, against the same download
 * through the delay relay alone (client -> delay relay -> target): the link's own capacity.
 * A second tunnel has its --connection-window sized to the link, for what an operator gets
 * by doing so. As in bulk, the paths take turns round after round and each figure is the
 * median round.
 */
import { startDelayRelay, startTarget } from '../lib/helpers.js';
import { tcpDialer, httpConnectDialer, type Dialer } from '../lib/dialers.js';
import { formatBytes, MiB } from '../lib/measure.js';
import { clientSide, startTunnelAgent, startTunnelServer, startWorkspace } from '../lib/tunnel.js';
import type { Context, Scenario } from '../lib/scenario.js';
import { measureInTurns, measureTransfer, medianRun, roundLabels, timedTransfer } from './bulk.js';

const RATIO_TARGET = 0.5;
/** The per-connection window an operator would give a 50 ms link: about its bandwidth-delay product. */
const LONG_LINK_WINDOW = 64 * MiB;
const WARMUP_BYTES = 4 * MiB;
/** Uploads are an extra figure (no target): small, since the server -> agent direction may be slow. */
const UPLOAD_BYTES = { quick: 8 * MiB, full: 32 * MiB };
const RELAY = 'delay relay alone';
const TUNNEL = 'HTTP-CONNECT via delay relay';
const WIDE_TUNNEL = 'HTTP-CONNECT via delay relay, 64 MiB window';
const DOWNLOAD_PATHS = [RELAY, TUNNEL, WIDE_TUNNEL];
const UPLOAD_PATHS = [RELAY, TUNNEL];

export const wan: Scenario = {
  name: 'wan',
  title: 'agent behind a high-latency link',
  plan: (config) => ['start target, delay relays and tunnels (agents via delay relays)', 'warm up every path',
    ...roundLabels(config.rounds).flatMap((r) => DOWNLOAD_PATHS.map((p) => `download via ${p}${r}`)),
    ...UPLOAD_PATHS.map((p) => `upload via ${p}`)],

  async run(ctx: Context) {
    const { config, scope } = ctx;
    const delay = config.wanDelayMs;
    ctx.step('start target, delay relays and tunnels (agents via delay relays)');
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
    const paths = new Map<string, Dialer>([
      [RELAY, tcpDialer(RELAY, target, { ...direct, name: 'relay' })],
      [TUNNEL, await tunnelBehindLink(TUNNEL)],
      [WIDE_TUNNEL, await tunnelBehindLink(WIDE_TUNNEL, [`--connection-window=${LONG_LINK_WINDOW}`])],
    ]);

    ctx.step('warm up every path');
    for (const dialer of paths.values()) await timedTransfer(dialer, 'download', WARMUP_BYTES, config.transferLimitMs);

    const downloads = await measureInTurns(ctx, DOWNLOAD_PATHS.map((label) => paths.get(label)!), 'download', config.wanBytes,
      `${formatBytes(config.wanBytes)}, +${delay} ms each way`);
    const medians = new Map(DOWNLOAD_PATHS.map((label) => [label, medianRun(downloads.get(label)!)]));
    const baseline = { label: 'delay relay', value: medians.get(RELAY)!.rate };
    for (const [label, run] of medians) {
      ctx.record({
        figure: `download via ${label}`,
        value: run.rate,
        unit: 'MB/s',
        baseline: label === RELAY ? undefined : baseline,
        target: label === TUNNEL ? { on: 'ratio', op: '>=', limit: RATIO_TARGET } : undefined,
        note: [run.spread, run.note, label === WIDE_TUNNEL ? `--connection-window=${LONG_LINK_WINDOW} on server and agent` : ''].filter(Boolean).join('; ') || undefined,
      });
    }

    const uploadBytes = Math.min(config.wanBytes, config.full ? UPLOAD_BYTES.full : UPLOAD_BYTES.quick);
    const uploads = new Map<string, Awaited<ReturnType<typeof measureTransfer>>>();
    for (const label of UPLOAD_PATHS) {
      ctx.step(`upload via ${label} (${formatBytes(uploadBytes)}, no target)`);
      uploads.set(label, await measureTransfer(ctx, paths.get(label)!, 'upload', uploadBytes));
    }
    for (const [label, { rate, note }] of uploads) {
      ctx.record({
        figure: `upload via ${label}`,
        value: rate,
        unit: 'MB/s',
        baseline: label === RELAY ? undefined : { label: 'delay relay', value: uploads.get(RELAY)!.rate },
        note,
      });
    }

    // Separates what the latency costs from the tunnel's own limit on loopback.
    const loopback = ctx.shared.get('bulk.download.HTTP-CONNECT');
    const overLink = medians.get(TUNNEL)!.rate;
    if (loopback !== undefined && overLink !== null) {
      ctx.record({
        figure: 'HTTP-CONNECT via delay relay vs on loopback',
        value: overLink,
        unit: 'MB/s',
        baseline: { label: 'loopback, bulk', value: loopback },
      });
    }
  },
};
