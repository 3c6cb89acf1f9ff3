/**
 * 7. rotation: bulk download through HTTP-CONNECT while the server's and the agent's
 * certificates rotate every few seconds (certificates from the CSR API of an in-process
 * hub, signed for 3 s), against the same download through a tunnel whose certificates last
 * a year. Each tunnel has a hub of its own; the two take turns round after round, and each
 * figure is the median round.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startTarget } from '../lib/helpers.js';
import { httpConnectDialer, type Dialer } from '../lib/dialers.js';
import { formatBytes, MiB } from '../lib/measure.js';
import { clientSide, startTunnelAgent, startTunnelServer, startWorkspace } from '../lib/tunnel.js';
import type { Context, Scenario } from '../lib/scenario.js';
import { measureInTurns, medianRun, timedTransfer } from './bulk.js';
import { HUB_NAMESPACE, startHub } from '../../harness/hub.js';
import { FileTlsSource } from '../../lib/pki/tls-source.js';
import { CLUSTER } from '../lib/tunnel.js';

const RATIO_TARGET = 0.9;
const WARMUP_BYTES = 64 * MiB;
const STEADY = 'certificates of a year';
const ROTATING = 'certificates of 3 s, rotating';

/** A tunnel whose certificates come from its own hub's CSR API, signed for `lifetime`. */
async function kubeTunnel(ctx: Context, label: string, lifetime: string, target: Parameters<typeof httpConnectDialer>[1]): Promise<{ dialer: Dialer; rotations: () => number }> {
  const { scope } = ctx;
  const ws = await startWorkspace(scope);
  const hub = await startHub(join(ws.dir, 'hub'), [CLUSTER]);
  scope.defer(`hub (${label})`, () => hub.close());
  const server = await startTunnelServer(scope, ws, ['--cert-source=kube', `--kubeconfig=${hub.serverKubeconfig}`, `--namespace=${HUB_NAMESPACE}`,
    `--server-ca-cert=${ws.pki.caCert}`, `--max-cert-lifetime=${lifetime}`]);
  const agent = await startTunnelAgent(scope, ws, server.agentPort, ['--cert-source=kube', `--hub-kubeconfig=${hub.agentKubeconfig(CLUSTER)}`]);
  // Clients verify the server by the tunnel CA the server published.
  const bundle = join(ws.dir, 'tunnel-ca.crt');
  writeFileSync(bundle, (hub.api.objects.get('', 'configmaps', 'tunnel-ca', HUB_NAMESPACE) as { data: Record<string, string> }).data['ca.crt']);
  const clientTls = await FileTlsSource.load({ ca: bundle, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'bench client' });
  scope.defer('client TLS source', () => clientTls.close());
  const side = await clientSide(scope, ws, server);
  const dialer = httpConnectDialer({ ws, server, agent, ...side, clientTls, connectProxy: { ...side.connectProxy, tls: clientTls } }, target, label);
  const count = (text: string, pattern: RegExp) => text.split('\n').filter((line) => pattern.test(line)).length;
  return { dialer, rotations: () => count(server.proc.output, /new TLS certificate in use listener=http-connect/) + count(agent.proc.output, /certificate issued/) };
}

export const rotation: Scenario = {
  name: 'rotation',
  title: 'throughput while certificates rotate',
  plan: (config) => ['start target, hubs and tunnels (certificates from the CSR API)', 'warm up',
    ...Array.from({ length: config.rounds }, (_, i) => [STEADY, ROTATING].map((p) => `download via ${p}${config.rounds > 1 ? `, round ${i + 1} of ${config.rounds}` : ''}`)).flat()],

  async run(ctx: Context) {
    const { config, scope } = ctx;
    ctx.step('start target, hubs and tunnels (certificates from the CSR API)');
    const target = await startTarget(scope);
    const steady = await kubeTunnel(ctx, STEADY, '8760h', target);
    const rotating = await kubeTunnel(ctx, ROTATING, '3s', target);

    ctx.step('warm up');
    for (const { dialer } of [steady, rotating]) await timedTransfer(dialer, 'download', WARMUP_BYTES, config.transferLimitMs);

    const before = rotating.rotations();
    const runs = await measureInTurns(ctx, [steady.dialer, rotating.dialer], 'download', config.bulkBytes, formatBytes(config.bulkBytes));
    const rotations = rotating.rotations() - before;
    const base = medianRun(runs.get(STEADY)!);
    const during = medianRun(runs.get(ROTATING)!);
    ctx.record({ figure: `download via HTTP-CONNECT, ${STEADY}`, value: base.rate, unit: 'MB/s', note: [base.spread, base.note].filter(Boolean).join('; ') || undefined });
    ctx.record({
      figure: `download via HTTP-CONNECT, ${ROTATING}`,
      value: during.rate,
      unit: 'MB/s',
      baseline: { label: STEADY, value: base.rate },
      target: { on: 'ratio', op: '>=', limit: RATIO_TARGET },
      note: [during.spread, during.note, `${rotations} certificate swaps and renewals (server and agent) during the measured rounds`].filter(Boolean).join('; '),
    });
  },
};
