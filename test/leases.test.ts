/**
 * --enable-lease-controller against the hub's API double (harness/hub.ts, with the server's
 * RBAC of k8s/hub): each server holds and renews a Lease of its own, tells agents the number
 * of live Leases as its server count, deletes expired Leases with its label (and no other),
 * and deletes its own when it stops; kubectl lists the Leases as it would at a real hub. An
 * agent with --count-server-leases goes by the number of live Leases instead of the headers.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { agentAccount, serviceAccountUser, startHub, HUB_NAMESPACE } from '../harness/hub.js';
import { eventually, metric, runToEnd, startAgent, startServer, workspace, type ServerHandle } from './helpers/system.js';

const execFileAsync = promisify(execFile);
const KUBECTL = '/usr/bin/kubectl';
const GROUP = 'coordination.k8s.io';
const LABELS = { 'k8s-app': 'konnectivity-server' };

function lease(name: string, labels: Record<string, string> | undefined, renewed: Date, seconds: number) {
  return {
    apiVersion: `${GROUP}/v1`, kind: 'Lease',
    metadata: { name, namespace: HUB_NAMESPACE, ...(labels ? { labels } : {}) },
    spec: { holderIdentity: name, leaseDurationSeconds: seconds, renewTime: renewed.toISOString().replace('Z', '000Z') },
  };
}

test.serial('servers count each other by Leases, collect an expired one, tell agents the count, and delete their own on SIGTERM', async (t) => {
  const ws = await workspace();
  const hub = await startHub(join(ws.dir, 'hub'), []);
  const servers: ServerHandle[] = [];
  const home = mkdtempSync(join(tmpdir(), 'leases-kubectl-'));
  try {
    // A server that died an hour ago without deleting its Lease, and a Lease of someone else.
    hub.api.objects.put(GROUP, 'leases', lease('konnectivity-proxy-server-gone', LABELS, new Date(Date.now() - 3_600_000), 30));
    hub.api.objects.put(GROUP, 'leases', lease('not-a-server', undefined, new Date(Date.now() - 3_600_000), 30));
    const leaseArgs = ['--enable-lease-controller', `--kubeconfig=${hub.serverKubeconfig}`, `--lease-namespace=${HUB_NAMESPACE}`, '--lease-duration=3s', '--lease-renew-interval=1s'];
    for (const id of ['a', 'b']) servers.push(await startServer(ws, [...leaseArgs, `--server-id=${id}`], id));
    const count = (s: ServerHandle) => metric(s.healthPort, 'konnectivity_network_proxy_server_server_count');
    await eventually(async () => await count(servers[0]) === 2 && await count(servers[1]) === 2, 15_000, 'both servers count 2');
    await eventually(() => hub.api.objects.get(GROUP, 'leases', 'konnectivity-proxy-server-gone', HUB_NAMESPACE) === undefined, 10_000, 'the expired Lease is collected');
    t.truthy(hub.api.objects.get(GROUP, 'leases', 'not-a-server', HUB_NAMESPACE), 'a Lease without the label is left alone');
    const mine = hub.api.objects.get(GROUP, 'leases', 'konnectivity-proxy-server-a', HUB_NAMESPACE) as { metadata: { labels: Record<string, string> }; spec: Record<string, unknown> };
    t.deepEqual(mine.metadata.labels, LABELS);
    t.like(mine.spec, { holderIdentity: 'a', leaseDurationSeconds: 3 });

    if (existsSync(KUBECTL)) {
      const { stdout } = await execFileAsync(KUBECTL, ['--kubeconfig', hub.serverKubeconfig, 'get', 'leases', '-n', HUB_NAMESPACE, '-l', 'k8s-app=konnectivity-server', '-o', 'name'], { env: { ...process.env, HOME: home } });
      t.deepEqual(stdout.trim().split('\n').sort(), ['lease.coordination.k8s.io/konnectivity-proxy-server-a', 'lease.coordination.k8s.io/konnectivity-proxy-server-b']);
    } else {
      t.log(`kubectl is not installed at ${KUBECTL}: the Leases are checked through the API only`);
    }

    const agent = await startAgent(ws, servers[0], 'cluster-a');
    try {
      await agent.proc.waitFor(/connected to tunnel server serverID=a serverCount=2/);
    } finally {
      await agent.stop();
    }

    // b dies without a word: its Lease expires, a counts 1 again and deletes it.
    await servers[1].proc.stop('SIGKILL');
    await eventually(async () => await count(servers[0]) === 1, 15_000, 'server a counts 1');
    await eventually(() => hub.api.objects.get(GROUP, 'leases', 'konnectivity-proxy-server-b', HUB_NAMESPACE) === undefined, 10_000, 'b\'s expired Lease is collected');

    // a stops: it deletes its own Lease.
    t.is(await servers[0].stop(), 0);
    t.regex(servers[0].proc.output, /deleted this server's Lease/);
    t.deepEqual(hub.api.objects.list(GROUP, 'leases', HUB_NAMESPACE).map((l) => (l.metadata as { name: string }).name), ['not-a-server']);
  } finally {
    for (const server of servers) await server.stop();
    await hub.close();
    rmSync(home, { recursive: true, force: true });
    ws.cleanup();
  }
});

test.serial('an agent with --count-server-leases goes by the live Leases (none counts as 1)', async (t) => {
  const ws = await workspace();
  const hub = await startHub(join(ws.dir, 'hub'), ['cluster-a']);
  try {
    hub.api.grant({ user: serviceAccountUser(agentAccount('cluster-a')) }, [{ verbs: ['list'], apiGroups: [GROUP], resources: ['leases'], namespaces: [HUB_NAMESPACE] }]);
    for (const id of ['x', 'y', 'z']) hub.api.objects.put(GROUP, 'leases', lease(`konnectivity-proxy-server-${id}`, LABELS, new Date(), 3600));
    hub.api.objects.put(GROUP, 'leases', lease('konnectivity-proxy-server-old', LABELS, new Date(Date.now() - 3_600_000), 30));
    const server = await startServer(ws, ['--server-id=x']);
    const agent = await startAgent(ws, server, 'cluster-a', [
      '--count-server-leases', `--hub-kubeconfig=${hub.agentKubeconfig('cluster-a')}`, `--lease-namespace=${HUB_NAMESPACE}`, '--lease-count-interval=1s',
    ]);
    try {
      await agent.proc.waitFor(/server count from the servers' Leases count=3/);
      t.is(await metric(agent.healthPort, 'konnectivity_network_proxy_agent_known_server_count'), 3, 'the Leases, not the header (1)');
      for (const id of ['x', 'y', 'z']) hub.api.objects.delete(GROUP, 'leases', `konnectivity-proxy-server-${id}`, HUB_NAMESPACE);
      await agent.proc.waitFor(/server count from the servers' Leases count=1/);
      t.is(await metric(agent.healthPort, 'konnectivity_network_proxy_agent_known_server_count'), 1);
      t.notRegex(agent.proc.output, /cannot count the servers' Leases/);
    } finally {
      await agent.stop();
      await server.stop();
    }
  } finally {
    await hub.close();
    ws.cleanup();
  }
});

test.serial('a server without the lease RBAC keeps --server-count and says what to grant', async (t) => {
  const ws = await workspace();
  const hub = await startHub(join(ws.dir, 'hub'), []);
  try {
    const server = await startServer(ws, ['--enable-lease-controller', `--kubeconfig=${hub.serverKubeconfig}`, '--lease-namespace=elsewhere', '--lease-duration=3s', '--lease-renew-interval=1s', '--server-count=2']);
    try {
      await server.proc.waitFor(/cannot renew or count the servers' Leases; retrying/);
      t.regex(server.proc.output, /cannot get leases\.coordination\.k8s\.io .* in namespace .{1,2}elsewhere.* forbidden: .*; grant the caller /);
      t.is(await metric(server.healthPort, 'konnectivity_network_proxy_server_server_count'), 2);
    } finally {
      await server.stop();
    }
  } finally {
    await hub.close();
    ws.cleanup();
  }
});

test('lease flags that cannot work are usage errors', async (t) => {
  const ws = await workspace();
  try {
    for (const [flags, message] of [
      [['--lease-duration=3s', '--lease-renew-interval=3s'], /--lease-renew-interval=3s must be shorter than --lease-duration=3s/],
      [['--lease-label=k8s-app'], /--lease-label=k8s-app: "k8s-app" is not a label/],
      [['--lease-duration=500ms'], /--lease-duration=500ms must be at least 1s/],
    ] as const) {
      const result = await runToEnd('tunnel-server', [`--state-dir=${ws.dir}`, '--enable-lease-controller', '--kubeconfig=/nonexistent', ...flags]);
      t.is(result.code, 2, result.stderr);
      t.regex(result.stderr, message);
    }
  } finally {
    ws.cleanup();
  }
});
