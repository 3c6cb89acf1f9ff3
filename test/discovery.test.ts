/**
 * The agent finds the tunnel server from its hub Service (LoadBalancer, NodePort, ClusterIP
 * with the public-address annotation) and follows it; a Service with no usable address is
 * said in the log and the agent waits for one. And the seed's agent command line: the
 * bootstrap through the server's reverse proxy (`--apiserver-addr` is the reverse-proxy
 * port), klog's --v, the server found without --tunnelserver-addr.
 */
import test from 'ava';
import { join } from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { startHub, HUB_NAMESPACE, type Hub } from '../harness/hub.js';
import { eventually, httpGet, run, startServer, workspace, type Proc, type ServerHandle, type Workspace } from './helpers/system.js';

let ws: Workspace;
let hub: Hub;
let server: ServerHandle;

test.before(async () => {
  ws = await workspace();
  hub = await startHub(join(ws.dir, 'hub'), ['cluster-a']);
  server = await startServer(ws);
});

test.after.always(async () => {
  await server?.stop();
  await hub?.close();
  ws?.cleanup();
});

function putService(spec: Record<string, unknown>, extra: { annotations?: Record<string, string>; status?: Record<string, unknown> } = {}): void {
  hub.api.objects.put('', 'services', {
    apiVersion: 'v1', kind: 'Service',
    metadata: { name: 'tunnel-server', namespace: HUB_NAMESPACE, annotations: extra.annotations },
    spec,
    ...(extra.status ? { status: extra.status } : {}),
  });
}

function startDiscoveringAgent(extra: string[] = []): Proc {
  return run('tunnel-agent', [
    `--state-dir=${ws.dir}`, '--cluster-name=cluster-a', '--host-alias=cluster-a=127.0.0.1',
    `--hub-kubeconfig=${hub.agentKubeconfig('cluster-a')}`, `--server-service=${HUB_NAMESPACE}/tunnel-server`,
    '--health-bind-address=127.0.0.1', '--health-port=0', ...extra,
  ]);
}

async function readiness(agent: Proc): Promise<number> {
  const port = Number((await agent.waitFor(/service=health address=\S+:(\d+)/))[1]);
  return (await httpGet(port, '/readyz')).status;
}

const cases: Array<[string, () => void]> = [
  ['LoadBalancer ingress', () => putService(
    { type: 'LoadBalancer', ports: [{ name: 'agent', port: server.agentPort, targetPort: 10262 }] },
    { status: { loadBalancer: { ingress: [{ ip: '127.0.0.1' }] } } },
  )],
  ['NodePort on the nodes\' addresses', () => {
    hub.api.objects.put('', 'nodes', { apiVersion: 'v1', kind: 'Node', metadata: { name: 'hub-node-1' }, status: { addresses: [{ type: 'InternalIP', address: '127.0.0.1' }, { type: 'Hostname', address: 'hub-node-1' }] } });
    putService({ type: 'NodePort', ports: [{ name: 'agent', port: 10262, nodePort: server.agentPort }] });
  }],
  ['ClusterIP with the public-address annotation', () => putService(
    { type: 'ClusterIP', ports: [{ name: 'agent', port: server.agentPort }] },
    { annotations: { 'tunnel.tkestack.io/public-address': '127.0.0.1' } },
  )],
];

for (const [name, setup] of cases) {
  test.serial(`the agent finds the server from its Service: ${name}`, async (t) => {
    setup();
    const agent = startDiscoveringAgent();
    try {
      await agent.waitFor(new RegExp(`tunnel server address from its Service .*addresses="?127\\.0\\.0\\.1:${server.agentPort}`));
      await agent.waitFor(/connected to tunnel server/);
      t.is(await readiness(agent), 200);
    } finally {
      await agent.stop();
      hub.api.objects.delete('', 'services', 'tunnel-server', HUB_NAMESPACE);
    }
  });
}

test.serial('a Service with no usable address is said in the log; the agent connects once the Service gets one', async (t) => {
  const agent = startDiscoveringAgent();
  try {
    await agent.waitFor(/no address for the tunnel server yet: waiting for the tunnel server's Service/);
    putService({ type: 'ClusterIP', ports: [{ name: 'agent', port: server.agentPort }] });
    await agent.waitFor(/ClusterIP Service tunnel-system\/tunnel-server is not reachable from outside the hub by itself: set its tunnel.tkestack.io\/public-address annotation/);
    t.is(await readiness(agent), 503);
    t.notRegex(agent.output, /connected to tunnel server/);
    putService({ type: 'LoadBalancer', ports: [{ name: 'agent', port: server.agentPort }] }, { status: { loadBalancer: {} } });
    await agent.waitFor(/LoadBalancer Service tunnel-system\/tunnel-server has no ingress address yet/);
    putService({ type: 'ClusterIP', ports: [{ name: 'agent', port: server.agentPort }] }, { annotations: { 'tunnel.tkestack.io/public-address': `127.0.0.1:${server.agentPort}` } });
    await agent.waitFor(/connected to tunnel server/);
    await eventually(async () => await readiness(agent) === 200, 5_000, 'ready');
    t.pass();
  } finally {
    await agent.stop();
    hub.api.objects.delete('', 'services', 'tunnel-server', HUB_NAMESPACE);
  }
});

test.serial('bad flags: --server-service that is not NS/NAME, and without a hub API server', async (t) => {
  const bad = run('tunnel-agent', [`--state-dir=${ws.dir}`, '--cluster-name=cluster-a', '--server-service=tunnel-server', `--hub-kubeconfig=${hub.agentKubeconfig('cluster-a')}`]);
  t.is(await bad.exited, 2);
  t.regex(bad.output, /--server-service=tunnel-server is not NAMESPACE\/NAME/);
  const lost = run('tunnel-agent', [`--state-dir=${ws.dir}`, '--cluster-name=cluster-a', '--server-service=tunnel-system/tunnel-server']);
  t.is(await lost.exited, 2);
  t.regex(lost.output, /--server-service needs the hub's API server: give --hub-kubeconfig, or --apiserver-addr/);
  const verbose = run('tunnel-agent', [`--state-dir=${ws.dir}`, '--cluster-name=cluster-a', '--v=high']);
  t.is(await verbose.exited, 2);
  t.regex(verbose.output, /--v=high is not a verbosity: give a whole number/);
});

test.serial('the seed\'s command lines: the agent bootstraps through the server\'s reverse proxy and finds the server from its Service', async (t) => {
  const kubeWs = await workspace();
  const kubeHub = await startHub(join(kubeWs.dir, 'hub'), ['cluster-a']);
  let kubeServer: ServerHandle | undefined;
  let agent: Proc | undefined;
  try {
    // The server as the hub runs it: its certificate from the CSR API, the reverse proxy's / to the hub API (from --kubeconfig).
    kubeServer = await startServer(kubeWs, ['--cert-source=kube', `--kubeconfig=${kubeHub.serverKubeconfig}`, `--namespace=${HUB_NAMESPACE}`, `--server-ca-cert=${kubeWs.pki.caCert}`, '--v=2']);
    const proxyPort = Number((await kubeServer.proc.waitFor(/service=reverse-proxy address=\S+:(\d+)/))[1]);
    const bundle = kubeHub.api.objects.get('', 'configmaps', 'tunnel-ca', HUB_NAMESPACE) as { data: Record<string, string> };
    const tunnelCa = join(kubeWs.dir, 'bootstrap-ca.crt');
    writeFileSync(tunnelCa, bundle.data['ca.crt']);
    kubeHub.api.objects.put('', 'services', {
      apiVersion: 'v1', kind: 'Service',
      metadata: { name: 'tunnel-server', namespace: HUB_NAMESPACE, annotations: { 'tunnel.tkestack.io/public-address': '127.0.0.1' } },
      spec: { type: 'ClusterIP', ports: [{ name: 'reverse-proxy', port: proxyPort }, { name: 'agent', port: kubeServer.agentPort }] },
    });
    const before = kubeHub.api.requests.length;
    agent = run('tunnel-agent', [
      '--cluster-name=cluster-a', '--cert-source=kube', `--apiserver-addr=127.0.0.1:${proxyPort}`, `--hub-ca-cert=${tunnelCa}`,
      `--bootstrap-token-file=${kubeHub.agentTokenFile('cluster-a')}`, `--namespace=${HUB_NAMESPACE}`, `--server-service=${HUB_NAMESPACE}/tunnel-server`,
      '--host-alias=cluster-a=127.0.0.1', `--state-dir=${join(kubeWs.dir, 'agent')}`, '--health-bind-address=127.0.0.1', '--health-port=0', '--v=4',
    ]);
    await agent.waitFor(/connected to tunnel server/, 30_000);
    // Everything the agent asked of the hub went through the reverse proxy, with its bootstrap account.
    const agentCalls = kubeHub.api.requests.slice(before).filter((r) => r.user === 'system:serviceaccount:tunnel-system:tunnel-agent-cluster-a');
    t.true(agentCalls.some((r) => r.path.startsWith('/apis/certificates.k8s.io/v1/certificatesigningrequests') && r.method === 'POST'));
    t.true(agentCalls.some((r) => r.path.includes('/services')));
    t.regex(kubeServer.proc.output, /agent connected/);
    // No credential of the run in any log line: tokens, private keys, bearer headers.
    const token = readFileSync(kubeHub.agentTokenFile('cluster-a'), 'utf8').trim();
    const serverToken = /token: "?([^"\s]+)"?/.exec(readFileSync(kubeHub.serverKubeconfig, 'utf8'))?.[1];
    t.truthy(serverToken, 'the server\'s kubeconfig holds a token');
    for (const proc of [agent, kubeServer.proc]) {
      t.false(proc.output.includes(token), `${proc.name} logged the bootstrap token`);
      t.false(proc.output.includes(serverToken!), `${proc.name} logged the server's token`);
      t.notRegex(proc.output, /PRIVATE KEY|Bearer /i, `${proc.name} logged a key or a bearer header`);
    }
  } finally {
    await agent?.stop();
    await kubeServer?.stop();
    await kubeHub.close();
    kubeWs.cleanup();
  }
});
