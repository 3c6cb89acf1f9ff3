/**
 * Start hooks in the real agent binary: a module's pre-start hook runs before the agent
 * connects and its post-start hook after; a pre-start hook that fails under `abort` keeps the
 * agent from connecting and ends it with the hook's reason, one that never returns hits its
 * timeout; a failing `warn` hook leaves the tunnel serving. The tkestack provider reports the
 * managed cluster's credential (the managed API double's CA and the agent's token there) into
 * the hub's ClusterCredential, and no log line holds the token.
 */
import test from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startHub, serviceAccountUser, agentAccount, type Hub } from '../harness/hub.js';
import { startKubeApi, type KubeApiDouble } from '../harness/kube-api/index.js';
import { eventually, httpTarget, run, startServer, workspace, type Proc, type ServerHandle, type Target, type Workspace } from './helpers/system.js';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';

const MANAGED_TOKEN = 'managed-admin-token-9f3a61c2';
let ws: Workspace;
let hub: Hub;
let managed: KubeApiDouble;
let server: ServerHandle;
let target: Target;

test.before(async () => {
  ws = await workspace();
  hub = await startHub(join(ws.dir, 'hub'), ['cluster-a']);
  hub.api.registerResource({ group: 'platform.tkestack.io', version: 'v1', resource: 'clustercredentials', kind: 'ClusterCredential', namespaced: false, shortNames: ['cc'], selectableFields: ['clusterName', 'tenantID'] });
  hub.api.grant({ user: serviceAccountUser(agentAccount('cluster-a')) }, [
    { verbs: ['get', 'list', 'create', 'update'], apiGroups: ['platform.tkestack.io'], resources: ['clustercredentials'] },
  ]);
  managed = await startKubeApi();
  managed.addToken(MANAGED_TOKEN, { username: 'system:serviceaccount:tunnel-system:tunnel-agent' });
  server = await startServer(ws);
  target = await httpTarget('cluster-a');
});

test.after.always(async () => {
  await server?.stop();
  await target?.close();
  await hub?.close();
  await managed?.close();
  ws?.cleanup();
});

function hookModule(name: string, source: string): string {
  const path = join(ws.dir, `${name}.mjs`);
  writeFileSync(path, source);
  return path;
}

function startHookedAgent(extra: string[]): Proc {
  return run('tunnel-agent', [
    `--state-dir=${ws.dir}`, '--cluster-name=cluster-a', `--tunnelserver-addr=127.0.0.1:${server.agentPort}`, '--host-alias=cluster-a=127.0.0.1',
    '--health-bind-address=127.0.0.1', '--health-port=0', ...extra,
  ]);
}

async function getThroughTunnel(): Promise<string> {
  const tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
  const socket = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, `cluster-a:${target.port}`);
  // The tunnel has no half-close: the request is written, not ended; the target closes after its answer.
  socket.write(`GET /whoami HTTP/1.1\r\nHost: cluster-a\r\nConnection: close\r\n\r\n`);
  let text = '';
  for await (const chunk of socket) text += String(chunk);
  return text;
}

test.serial('a module\'s hooks run in order: pre-start before the agent connects, post-start after', async (t) => {
  const events = join(ws.dir, 'events.log');
  writeFileSync(events, '');
  const module = hookModule('order', `
    import { appendFileSync } from 'node:fs';
    export default (options) => [
      { name: 'first', preStart: async (ctx) => appendFileSync(options.get('file'), 'pre first ' + ctx.config.clusterName + '\\n'), postStart: async () => appendFileSync(options.get('file'), 'post first\\n') },
      { name: 'second', preStart: async () => appendFileSync(options.get('file'), 'pre second\\n'), postStart: async () => appendFileSync(options.get('file'), 'post second\\n') },
    ];
  `);
  const agent = startHookedAgent([`--hook-provider=${module}`, `--hook-option=file=${events}`]);
  try {
    await agent.waitFor(/connected to tunnel server/);
    await eventually(() => readFileSync(events, 'utf8').includes('post second'), 5_000, 'the post-start hooks');
    t.deepEqual(readFileSync(events, 'utf8').trim().split('\n'), ['pre first cluster-a', 'pre second', 'post first', 'post second']);
    t.regex(await getThroughTunnel(), /cluster-a GET \/whoami/);
  } finally {
    await agent.stop();
  }
});

test.serial('a pre-start hook that fails under abort: the agent never connects and exits with the hook\'s reason', async (t) => {
  const module = hookModule('throws', `export default { name: 'check-quota', failurePolicy: 'abort', preStart: async () => { throw new Error('quota for cluster-a is used up'); } };`);
  const agent = startHookedAgent([`--hook-provider=${module}`]);
  t.is(await agent.exited, 1);
  t.regex(agent.output, /pre-start hook \\?"check-quota\\?" failed: quota for cluster-a is used up/);
  t.notRegex(agent.output, /connected to tunnel server/);
});

test.serial('a hook that never returns hits its timeout; under warn the agent connects and serves', async (t) => {
  const module = hookModule('hangs', `export default { name: 'hangs', failurePolicy: 'warn', timeoutMs: 300, preStart: () => new Promise(() => {}) };`);
  const agent = startHookedAgent([`--hook-provider=${module}`]);
  try {
    await agent.waitFor(/connected to tunnel server/);
    t.regex(agent.output, /hangs.*(timed out|did not finish|within 300)/i);
    t.regex(await getThroughTunnel(), /cluster-a GET \/whoami/);
  } finally {
    await agent.stop();
  }
});

test.serial('a hook module that does not load: a usage error naming the path', async (t) => {
  const module = hookModule('broken', 'export const nothing = 1;');
  const agent = startHookedAgent([`--hook-provider=${module}`]);
  t.is(await agent.exited, 2);
  t.true(agent.output.includes(module), agent.output);
});

test.serial('tkestack: the managed cluster\'s credential lands in the hub\'s ClusterCredential; the token is in no log line', async (t) => {
  const managedKubeconfig = join(ws.dir, 'managed.kubeconfig');
  writeFileSync(managedKubeconfig, managed.kubeconfig({ token: MANAGED_TOKEN }));
  hub.api.objects.put('platform.tkestack.io', 'clustercredentials', {
    apiVersion: 'platform.tkestack.io/v1', kind: 'ClusterCredential', metadata: { name: 'cc-other' }, clusterName: 'cluster-b', token: 'other-token',
  });
  const agent = startHookedAgent([
    '--hook-provider=tkestack', '--hook-option=tenant-id=default', `--managed-kubeconfig=${managedKubeconfig}`,
    `--hub-kubeconfig=${hub.agentKubeconfig('cluster-a')}`, '--v=4',
  ]);
  try {
    await agent.waitFor(/connected to tunnel server/);
    type Credential = { metadata: { name: string; labels?: Record<string, string> }; clusterName: string; tenantID?: string; token?: string; caCert?: string };
    const mine = () => (hub.api.objects.list('platform.tkestack.io', 'clustercredentials') as Credential[]).find((c) => c.clusterName === 'cluster-a');
    await eventually(() => mine() !== undefined, 15_000, 'the ClusterCredential of cluster-a');
    const credential = mine()!;
    t.regex(credential.metadata.name, /^cc-/);
    t.is(credential.metadata.labels?.['tkestack.io/cluster-name'], 'cluster-a');
    t.is(credential.tenantID, 'default');
    t.is(credential.token, MANAGED_TOKEN);
    t.is(Buffer.from(credential.caCert!, 'base64').toString(), managed.caPem);
    const other = hub.api.objects.get('platform.tkestack.io', 'clustercredentials', 'cc-other') as Credential;
    t.is(other.token, 'other-token', 'another cluster\'s credential is left alone');
    await agent.waitFor(new RegExp(credential.metadata.name));
    t.false(agent.output.includes(MANAGED_TOKEN), 'the token is in no log line');
  } finally {
    await agent.stop();
  }
});
