/**
 * Kubernetes clients through the tunnel, whole-system: the real tunnel-server, tunnel-agent
 * and tunnel-client binaries on 127.0.0.1 and unix sockets, in front of an API server double
 * standing in for a managed cluster ("cluster-a", which the agent resolves to 127.0.0.1).
 * tunnel-client --kubeconfig, the library's TunnelKubeConfig (list and watch), kubectl
 * through tunnel-client --listen and --write-kubeconfig, and the local CONNECT proxy itself.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import { CoreV1Api, KubeConfig, Watch, loadYaml, type KubernetesObject, type V1Pod } from '@kubernetes/client-node';
import { startKubeApi, type KubeApiDouble } from '../harness/kube-api/index.js';
import {
  createTunnelDialer, isLoopback, startLocalProxy, tunnelKubeConfig, TunnelKubeConfig, type TunnelDial,
} from '../lib/client/index.js';
import { FileTlsSource, type TlsSource } from '../lib/pki/tls-source.js';
import { UsageError } from '../lib/common/errors.js';
import {
  echoTarget, eventually, exchange, run, runToEnd, sha256, startAgent, startServer, workspace,
  type AgentHandle, type Proc, type ServerHandle, type Target, type Workspace,
} from './helpers/system.js';

const execFileAsync = promisify(execFile);
const CLUSTER = 'cluster-a';
const VIEWER_TOKEN = 'viewer-token';
const NOBODY_TOKEN = 'nobody-token';
const MiB = 1024 * 1024;
const WAIT_MS = 15_000;

/** The pods of the managed cluster, by namespace; `watched` starts empty. */
const PODS: Array<{ namespace: string; name: string; phase: string }> = [
  { namespace: 'team-a', name: 'web-1', phase: 'Running' },
  { namespace: 'team-a', name: 'web-2', phase: 'Pending' },
  { namespace: 'team-b', name: 'db-0', phase: 'Running' },
  { namespace: 'team-b', name: 'web-1', phase: 'Succeeded' },
];

interface World {
  ws: Workspace;
  server: ServerHandle;
  agent: AgentHandle;
  api: KubeApiDouble;
  apiPort: number;
  echo: Target;
  tls: TlsSource;
  /** The managed cluster's kubeconfig: token user "viewer", namespace team-a, server https://127.0.0.1:PORT. */
  kubeconfig: string;
  /** The same cluster with a user that may do nothing. */
  nobodyKubeconfig: string;
}

let world: World;

test.before(async () => {
  const ws = await workspace();
  const api = await startKubeApi();
  api.addToken(VIEWER_TOKEN, { username: 'viewer', groups: ['viewers'] });
  api.grant({ user: 'viewer' }, [{ verbs: ['get', 'list', 'watch'], apiGroups: [''], resources: ['pods'] }]);
  api.addToken(NOBODY_TOKEN, { username: 'nobody' });
  for (const namespace of ['team-a', 'team-b', 'watched']) api.objects.put('', 'namespaces', { metadata: { name: namespace } });
  for (const pod of PODS) api.objects.put('', 'pods', podObject(pod.namespace, pod.name, pod.phase));
  const kubeconfig = join(ws.dir, 'cluster-a.kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig({ token: VIEWER_TOKEN }, { namespace: 'team-a' }), { mode: 0o600 });
  const nobodyKubeconfig = join(ws.dir, 'nobody.kubeconfig');
  writeFileSync(nobodyKubeconfig, api.kubeconfig({ token: NOBODY_TOKEN }), { mode: 0o600 });
  const server = await startServer(ws);
  const agent = await startAgent(ws, server, CLUSTER);
  const tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
  world = { ws, server, agent, api, apiPort: Number(new URL(api.url).port), echo: await echoTarget(), tls, kubeconfig, nobodyKubeconfig };
});

test.after.always(async () => {
  if (!world) return;
  await world.agent.stop();
  await world.server.stop();
  await world.api.close();
  await world.echo.close();
  world.ws.cleanup();
});

function podObject(namespace: string, name: string, phase: string): Record<string, unknown> {
  return {
    apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace },
    spec: { containers: [{ name: 'main', image: 'registry.example/app:1.0' }] },
    status: { phase },
  };
}

/** mTLS to the tunnel server's HTTP-CONNECT port, with the workspace's client certificate. */
function connectFlags(): string[] {
  const { ws, server } = world;
  return ['--proxy-host=127.0.0.1', `--proxy-port=${server.connectPort}`, `--ca-cert=${ws.pki.caCert}`, `--client-cert=${ws.pki.clientCert}`, `--client-key=${ws.pki.clientKey}`];
}

function grpcFlags(): string[] {
  return ['--mode=grpc', `--proxy-uds=${world.server.grpcUds}`];
}

/** `NAMESPACE NAME STATUS` rows the double holds, sorted, for one namespace or all. */
function expectedRows(namespace?: string): string[][] {
  return world.api.objects.list('', 'pods', namespace)
    .map((pod) => {
      const { metadata, status } = pod as V1Pod;
      return [metadata?.namespace ?? '', metadata?.name ?? '', status?.phase ?? ''];
    })
    .sort((a, b) => a.join('/').localeCompare(b.join('/')));
}

/** Parses `kubectl get pods`-like output: the header, then the rows, sorted. */
function parseTable(stdout: string): { header: string[]; rows: string[][] } {
  const [header, ...rows] = stdout.trimEnd().split('\n').map((line) => line.trim().split(/\s+/));
  return { header, rows: rows.sort((a, b) => a.join('/').localeCompare(b.join('/'))) };
}

function names(objects: KubernetesObject[]): string[] {
  return objects.map((o) => `${o.metadata?.namespace}/${o.metadata?.name}`).sort();
}

/** Rejects after WAIT_MS, so that a hang fails the test rather than stalling the run. */
function bounded<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A CONNECT through the local proxy: the status line and head, and the socket after it (with any bytes that followed the head unread). */
async function connectThrough(proxyPort: number, target: string, early?: Buffer): Promise<{ status: string; head: string; body: string; socket: net.Socket }> {
  const socket = net.connect({ host: '127.0.0.1', port: proxyPort });
  await once(socket, 'connect');
  socket.write(Buffer.concat([Buffer.from(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`), early ?? Buffer.alloc(0)]));
  let buffered = Buffer.alloc(0);
  for (;;) {
    const [chunk] = await bounded(once(socket, 'data') as Promise<[Buffer]>, `the answer to CONNECT ${target}`);
    buffered = Buffer.concat([buffered, chunk]);
    const end = buffered.indexOf('\r\n\r\n');
    if (end < 0) continue;
    const head = buffered.subarray(0, end).toString('latin1');
    socket.pause();
    let rest = buffered.subarray(end + 4);
    const status = head.split('\r\n')[0];
    if (!status.startsWith('HTTP/1.1 200')) {
      const length = Number(/content-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
      socket.resume();
      while (rest.length < length) rest = Buffer.concat([rest, ...(await bounded(once(socket, 'data') as Promise<[Buffer]>, 'the error body'))]);
      socket.destroy();
      return { status, head, body: rest.toString('utf8'), socket };
    }
    if (rest.length > 0) socket.unshift(rest);
    return { status, head, body: '', socket };
  }
}

/** Runs tunnel-client --listen and waits for its address line. */
async function localProxy(args: string[]): Promise<{ proc: Proc; address: string; port: number }> {
  const proc = run('tunnel-client', ['--listen=127.0.0.1:0', ...args]);
  const match = await proc.waitFor(/local CONNECT proxy listening on (127\.0\.0\.1:(\d+))/);
  return { proc, address: match[1], port: Number(match[2]) };
}

/** The first kubectl on PATH, or undefined. */
function findKubectl(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter).filter(Boolean)) {
    const candidate = join(dir, 'kubectl');
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

// ---- tunnel-client --kubeconfig -----------------------------------------------------------------

test.serial('tunnel-client --kubeconfig lists exactly the pods the managed cluster holds: the context\'s namespace, --namespace, all namespaces', async (t) => {
  const base = [`--kubeconfig=${world.kubeconfig}`, `--cluster-name=${CLUSTER}`];

  const contextNamespace = await runToEnd('tunnel-client', [...connectFlags(), ...base]);
  t.is(contextNamespace.code, 0, contextNamespace.stderr);
  const teamA = parseTable(contextNamespace.stdout);
  t.deepEqual(teamA.header, ['NAMESPACE', 'NAME', 'STATUS']);
  t.deepEqual(teamA.rows, expectedRows('team-a'));
  t.is(teamA.rows.length, 2);

  const teamB = await runToEnd('tunnel-client', [...connectFlags(), ...base, '--namespace=team-b']);
  t.is(teamB.code, 0, teamB.stderr);
  t.deepEqual(parseTable(teamB.stdout).rows, expectedRows('team-b'));

  for (const flags of [connectFlags(), grpcFlags()]) {
    const all = await runToEnd('tunnel-client', [...flags, ...base, '--all-namespaces']);
    t.is(all.code, 0, all.stderr);
    t.deepEqual(parseTable(all.stdout).rows, expectedRows(), `through ${flags[0]}`);
    t.is(parseTable(all.stdout).rows.length, PODS.length);
  }

  const empty = await runToEnd('tunnel-client', [...connectFlags(), ...base, '--namespace=watched-never']);
  t.is(empty.code, 0, empty.stderr);
  t.is(empty.stdout, '');
  t.is(empty.stderr, 'No resources found in watched-never namespace.\n');

  // The requests reached the API server as the kubeconfig's user.
  t.true(world.api.requests.some((r) => r.path.startsWith('/api/v1/pods') && r.user === 'viewer' && r.status === 200));
  t.true(world.api.requests.some((r) => r.path.startsWith('/api/v1/namespaces/team-b/pods') && r.user === 'viewer' && r.status === 200));
});

test.serial('tunnel-client --kubeconfig says what failed: a cluster without an agent, the API server\'s refusal, a certificate that does not verify, an unreadable kubeconfig, a non-loopback --listen', async (t) => {
  const port = world.apiPort;
  const nowhere = await runToEnd('tunnel-client', [...connectFlags(), `--kubeconfig=${world.kubeconfig}`, '--cluster-name=cluster-nowhere']);
  t.is(nowhere.code, 1);
  t.is(nowhere.stdout, '');
  t.regex(nowhere.stderr, new RegExp(`^tunnel-client: cannot list pods in namespace "team-a" of cluster "cluster-nowhere" \\(API server https://127\\.0\\.0\\.1:${port} of kubeconfig .*\\): the tunnel could not connect to cluster "cluster-nowhere" \\(cluster-nowhere:${port}\\): proxy 127\\.0\\.0\\.1:${world.server.connectPort} refused CONNECT cluster-nowhere:${port}: 500 Internal Server Error: currently no tunnels available: No agent available\\n$`));

  const nowhereGrpc = await runToEnd('tunnel-client', [...grpcFlags(), `--kubeconfig=${world.kubeconfig}`, '--cluster-name=cluster-nowhere']);
  t.is(nowhereGrpc.code, 1);
  t.regex(nowhereGrpc.stderr, new RegExp(`the tunnel could not connect to cluster "cluster-nowhere" \\(cluster-nowhere:${port}\\): proxy unix://${world.server.grpcUds} could not dial cluster-nowhere:${port}: No agent available\\n$`));

  // Without --cluster-name the context's cluster name is the route: the double's is kube-api-double.
  const byContext = await runToEnd('tunnel-client', [...connectFlags(), `--kubeconfig=${world.kubeconfig}`]);
  t.is(byContext.code, 1);
  t.regex(byContext.stderr, /of cluster "kube-api-double" .*refused CONNECT kube-api-double:\d+: 500 .*No agent available/);

  const forbidden = await runToEnd('tunnel-client', [...connectFlags(), `--kubeconfig=${world.nobodyKubeconfig}`, `--cluster-name=${CLUSTER}`, '--namespace=team-a']);
  t.is(forbidden.code, 1);
  t.regex(forbidden.stderr, /^tunnel-client: cannot list pods in namespace "team-a" of cluster "cluster-a" .*: the API server answered 403 Forbidden: pods is forbidden: User "nobody" cannot list resource "pods" in API group "" in the namespace "team-a"\n$/);

  const wrongNameFile = join(world.ws.dir, 'wrong-name.kubeconfig');
  writeFileSync(wrongNameFile, world.api.kubeconfig({ token: VIEWER_TOKEN }, { tlsServerName: 'not-the-api-server.example' }), { mode: 0o600 });
  const wrongName = await runToEnd('tunnel-client', [...connectFlags(), `--kubeconfig=${wrongNameFile}`, `--cluster-name=${CLUSTER}`]);
  t.is(wrongName.code, 1);
  t.regex(wrongName.stderr, /: the certificate of the API server did not verify \(ERR_TLS_CERT_ALTNAME_INVALID\): Hostname\/IP does not match certificate's altnames: Host: not-the-api-server\.example\. .*; check the kubeconfig's certificate-authority and tls-server-name\n$/);

  const missing = join(world.ws.dir, 'no-such.kubeconfig');
  const unreadable = await runToEnd('tunnel-client', [...connectFlags(), `--kubeconfig=${missing}`]);
  t.is(unreadable.code, 2);
  t.is(unreadable.stderr, `tunnel-client: cannot read the kubeconfig ${missing}: ENOENT; give an existing file\n`);

  const remote = await runToEnd('tunnel-client', [...connectFlags(), '--listen=0.0.0.0:0']);
  t.is(remote.code, 2);
  t.regex(remote.stderr, /would listen on 0\.0\.0\.0, which is not a loopback address: it has no authentication/);

  const lonely = await runToEnd('tunnel-client', [...connectFlags(), `--write-kubeconfig=${join(world.ws.dir, 'x')}`]);
  t.is(lonely.code, 2);
  t.regex(lonely.stderr, /--write-kubeconfig needs --listen .* and --kubeconfig/);
});

// ---- the library ----------------------------------------------------------------------------------

test.serial('tunnelKubeConfig: CoreV1Api lists and Watch watches pods through the tunnel, verifying the API server by the kubeconfig\'s name', async (t) => {
  const { api, apiPort, server, tls } = world;
  const dialed: string[] = [];
  const dial = createTunnelDialer({ mode: 'http-connect', proxy: { host: '127.0.0.1', port: server.connectPort, tls } });
  const counting: TunnelDial = (address) => {
    dialed.push(address);
    return dial(address);
  };
  // tls-server-name: a name of the serving certificate other than the address dialed.
  const source = new KubeConfig();
  source.loadFromString(api.kubeconfig({ token: VIEWER_TOKEN }, { namespace: 'team-a', tlsServerName: 'kubernetes.default.svc' }));
  const kc = tunnelKubeConfig(source, { cluster: CLUSTER, dialer: counting });
  t.true(kc instanceof KubeConfig);
  t.is(kc.tunnelAddress(), `${CLUSTER}:${apiPort}`);
  const core = kc.makeApiClient(CoreV1Api);

  const teamA = await bounded(core.listNamespacedPod({ namespace: 'team-a' }), 'listNamespacedPod');
  t.deepEqual(names(teamA.items), names(api.objects.list('', 'pods', 'team-a') as KubernetesObject[]));
  const all = await bounded(core.listPodForAllNamespaces(), 'listPodForAllNamespaces');
  t.deepEqual(names(all.items), names(api.objects.list('', 'pods') as KubernetesObject[]));
  t.is(all.items.length, PODS.length);

  // A pod put after the watch started arrives as ADDED.
  const before = await bounded(core.listNamespacedPod({ namespace: 'watched' }), 'listNamespacedPod watched');
  t.deepEqual(before.items, []);
  const events: Array<{ type: string; name?: string }> = [];
  let watchDone: unknown = 'not yet';
  const added = new Promise<void>((resolve) => {
    const watching = new Watch(kc).watch('/api/v1/namespaces/watched/pods', { resourceVersion: before.metadata?.resourceVersion }, (type: string, object: V1Pod) => {
      events.push({ type, name: object.metadata?.name });
      if (type === 'ADDED' && object.metadata?.name === 'late-arrival') resolve();
    }, (err: unknown) => { watchDone = err; });
    void watching.then((controller) => {
      void added.finally(() => controller.abort());
    });
  });
  const dialsBeforeWatch = dialed.length;
  await eventually(() => dialed.length > dialsBeforeWatch, WAIT_MS, 'the watch to dial');
  api.objects.put('', 'pods', podObject('watched', 'late-arrival', 'Pending'));
  await bounded(added, 'the ADDED event of late-arrival');
  t.deepEqual(events, [{ type: 'ADDED', name: 'late-arrival' }]);
  t.not(watchDone, 'not yet', 'the watch reported its end once aborted');
  t.true(api.requests.some((r) => r.path.startsWith('/api/v1/namespaces/watched/pods?') && r.path.includes('watch=true') && r.user === 'viewer'));
  api.objects.delete('', 'pods', 'late-arrival', 'watched');

  // Every connection went through the tunnel to the cluster's route, on the API server's port.
  t.true(dialed.length >= 4);
  t.deepEqual([...new Set(dialed)], [`${CLUSTER}:${apiPort}`]);

  // The gRPC frontend, given as dialer options.
  const viaGrpc = tunnelKubeConfig(source, { cluster: CLUSTER, dialer: { mode: 'grpc', proxy: { uds: server.grpcUds } } });
  const overGrpc = await bounded(viaGrpc.makeApiClient(CoreV1Api).listNamespacedPod({ namespace: 'team-b' }), 'listNamespacedPod over gRPC');
  t.deepEqual(names(overGrpc.items), names(api.objects.list('', 'pods', 'team-b') as KubernetesObject[]));

  // TLS runs to the API server: a tls-server-name its certificate does not carry fails to verify.
  const wrongName = new TunnelKubeConfig({ cluster: CLUSTER, dialer: counting });
  wrongName.loadFromString(api.kubeconfig({ token: VIEWER_TOKEN }, { tlsServerName: 'not-the-api-server.example' }));
  await t.throwsAsync(bounded(wrongName.makeApiClient(CoreV1Api).listNamespacedPod({ namespace: 'team-a' }), 'the failing list'), { any: true, message: /not-the-api-server\.example|altnames|ERR_TLS_CERT_ALTNAME_INVALID/ });

  // A cluster without an agent: the tunnel's refusal, with the code node-fetch keeps.
  const nowhere = tunnelKubeConfig(source, { cluster: 'cluster-nowhere', dialer: counting });
  // node-fetch's FetchError does not inherit from Error, hence `any`.
  const refused = await t.throwsAsync(bounded(nowhere.makeApiClient(CoreV1Api).listNamespacedPod({ namespace: 'team-a' }), 'the refused list'), { any: true }) as NodeJS.ErrnoException;
  t.regex(refused.message, /the tunnel could not connect to cluster "cluster-nowhere" \(cluster-nowhere:\d+\): .*No agent available/);
  t.is(refused.code, 'ETUNNELDIAL');

  t.throws(() => tunnelKubeConfig(source, { cluster: 'no such:cluster', dialer: counting }), { message: /cannot be routed by the tunnel/ });
});

// ---- kubectl through tunnel-client --listen ------------------------------------------------------------

test.serial('kubectl with the kubeconfig --write-kubeconfig wrote lists the same pods through tunnel-client --listen', async (t) => {
  const kubectl = findKubectl();
  if (!kubectl) {
    t.log('kubectl is not on PATH: nothing to run through the local proxy');
    t.pass();
    return;
  }
  const home = mkdtempSync(join(tmpdir(), 'kube-client-kubectl-'));
  const out = join(world.ws.dir, 'via-proxy.kubeconfig');
  const proxy = await localProxy([...connectFlags(), `--kubeconfig=${world.kubeconfig}`, `--cluster-name=${CLUSTER}`, `--write-kubeconfig=${out}`]);
  try {
    await proxy.proc.waitFor(/wrote .*via-proxy\.kubeconfig/);
    t.is(statSync(out).mode & 0o777, 0o600, 'the copy holds credentials');
    const written = loadYaml<{ clusters: Array<{ cluster: Record<string, string> }>; users: Array<{ user: Record<string, string> }>; contexts: Array<{ context: Record<string, string> }> }>(readFileSync(out, 'utf8'));
    t.like(written.clusters[0].cluster, { server: `https://${CLUSTER}:${world.apiPort}`, 'proxy-url': `http://${proxy.address}`, 'tls-server-name': '127.0.0.1' });
    t.is(written.clusters[0].cluster['certificate-authority-data'], Buffer.from(world.api.caPem).toString('base64'));
    t.is(written.users[0].user.token, VIEWER_TOKEN);
    t.is(written.contexts[0].context.namespace, 'team-a');

    const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/_proxy$/i.test(key)));
    const { stdout } = await execFileAsync(kubectl, ['--kubeconfig', out, 'get', 'pods', '-A', '-o', 'name'], { env: { ...env, HOME: home }, timeout: WAIT_MS });
    const expected = world.api.objects.list('', 'pods').map((pod) => `pod/${(pod as V1Pod).metadata?.name}`).sort();
    t.deepEqual(stdout.trim().split('\n').sort(), expected);
    t.is(expected.length, PODS.length);
    const teamB = await execFileAsync(kubectl, ['--kubeconfig', out, 'get', 'pods', '-n', 'team-b', '-o', 'name'], { env: { ...env, HOME: home }, timeout: WAIT_MS });
    t.deepEqual(teamB.stdout.trim().split('\n').sort(), ['pod/db-0', 'pod/web-1']);
  } finally {
    t.is(await proxy.proc.stop(), 0, proxy.proc.output);
    rmSync(home, { recursive: true, force: true });
  }
});

// ---- the local CONNECT proxy ------------------------------------------------------------------------------

test.serial('the local proxy answers 405 to other methods and 502 with the tunnel\'s reason, and carries 1 MiB both ways intact', async (t) => {
  const proxy = await localProxy(connectFlags());
  try {
    const wrongMethod = await new Promise<{ status: number; allow?: string; body: string }>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: proxy.port, path: 'http://cluster-a:80/' }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => { body += d.toString(); });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, allow: res.headers.allow, body }));
      }).on('error', reject);
    });
    t.is(wrongMethod.status, 405);
    t.is(wrongMethod.allow, 'CONNECT');
    t.regex(wrongMethod.body, /GET is not served here: this is a CONNECT proxy into the tunnel/);

    const unknown = await connectThrough(proxy.port, 'cluster-nowhere:443');
    t.is(unknown.status, 'HTTP/1.1 502 Bad Gateway');
    t.is(unknown.body, `proxy 127.0.0.1:${world.server.connectPort} refused CONNECT cluster-nowhere:443: 500 Internal Server Error: currently no tunnels available: No agent available\n`);

    // Bytes sent along with the CONNECT head count too.
    const payload = randomBytes(MiB);
    const early = 4096;
    const { status, socket } = await connectThrough(proxy.port, `${CLUSTER}:${world.echo.port}`, payload.subarray(0, early));
    t.is(status, 'HTTP/1.1 200 Connection Established');
    socket.resume();
    let received = 0;
    socket.on('data', (chunk: Buffer) => { received += chunk.length; });
    t.is(await exchange(socket, payload.subarray(early), payload.length), sha256(payload));
    t.is(received, MiB);
    // An end passes through: the echo target ends in turn, and both sides close.
    const ended = once(socket, 'end');
    socket.end();
    await bounded(ended, 'the end of the echoed stream');
    await eventually(() => world.echo.open === 0, WAIT_MS, 'the target connection to close');
  } finally {
    t.is(await proxy.proc.stop(), 0, proxy.proc.output);
  }
});

test.serial('the local proxy pinned to a cluster (--cluster-name, gRPC frontend) sends every CONNECT there with the port asked for', async (t) => {
  const proxy = await localProxy([...grpcFlags(), `--cluster-name=${CLUSTER}`]);
  try {
    t.regex(proxy.proc.output, /every CONNECT goes to cluster cluster-a through unix:\/\//);
    const payload = randomBytes(MiB + 17);
    const { status, socket } = await connectThrough(proxy.port, `api.anything.example:${world.echo.port}`);
    t.is(status, 'HTTP/1.1 200 Connection Established');
    socket.resume();
    let received = 0;
    socket.on('data', (chunk: Buffer) => { received += chunk.length; });
    t.is(await exchange(socket, payload, payload.length), sha256(payload));
    t.is(received, payload.length);
    socket.destroy();
    await eventually(() => world.echo.open === 0, WAIT_MS, 'the target connection to close');

    const closedPort = await connectThrough(proxy.port, 'anything:1');
    t.is(closedPort.status, 'HTTP/1.1 502 Bad Gateway');
    t.regex(closedPort.body, /cluster-a:1: .*connection refused/);
  } finally {
    t.is(await proxy.proc.stop(), 0, proxy.proc.output);
  }
});

test.serial('startLocalProxy: loopback only unless allowed, and a reader that stops reading holds the writer back', async (t) => {
  const dial = createTunnelDialer({ mode: 'grpc', proxy: { uds: world.server.grpcUds } });
  await t.throwsAsync(startLocalProxy({ listen: { host: '0.0.0.0', port: 0 }, dialer: dial }), { instanceOf: UsageError, message: /not a loopback address/ });
  t.true(isLoopback('127.0.0.1') && isLoopback('::1') && isLoopback('localhost') && isLoopback('127.1.2.3'));
  t.false(isLoopback('0.0.0.0') || isLoopback('10.0.0.1') || isLoopback('::') || isLoopback('example.com'));

  // A source that writes as fast as it is let, to a client that does not read for a while.
  const total = 96 * MiB;
  const chunk = randomBytes(MiB);
  let accepted = 0;
  const source = net.createServer((socket) => {
    let sent = 0;
    const pump = () => {
      while (sent < total) {
        sent += chunk.length;
        if (!socket.write(chunk, () => { accepted += chunk.length; })) {
          socket.once('drain', pump);
          return;
        }
      }
      socket.end();
    };
    pump();
  });
  source.listen(0, '127.0.0.1');
  await once(source, 'listening');
  const sourcePort = (source.address() as net.AddressInfo).port;
  const dialedTo: string[] = [];
  const proxy = await startLocalProxy({
    listen: { host: '127.0.0.1', port: 0 },
    cluster: 'pinned',
    dialer: async (address) => {
      dialedTo.push(address);
      const socket = net.connect({ host: '127.0.0.1', port: Number(address.split(':')[1]) });
      await once(socket, 'connect');
      return socket;
    },
  });
  try {
    t.is(proxy.url, `http://127.0.0.1:${proxy.port}`);
    const { status, socket } = await connectThrough(proxy.port, `elsewhere:${sourcePort}`);
    t.is(status, 'HTTP/1.1 200 Connection Established');
    t.deepEqual(dialedTo, [`pinned:${sourcePort}`]);
    t.is(proxy.connections, 1);
    await new Promise((r) => setTimeout(r, 1_000));
    t.true(accepted < total / 2, `the source got only as far as the buffers allow (${accepted} of ${total} bytes)`);
    const digest = new Promise<{ length: number; digest: string }>((resolve) => {
      const hash = createHash('sha256');
      let length = 0;
      socket.on('data', (d: Buffer) => { hash.update(d); length += d.length; });
      socket.on('end', () => resolve({ length, digest: hash.digest('hex') }));
    });
    socket.resume();
    const got = await bounded(digest, 'the whole stream');
    t.is(got.length, total);
    t.is(got.digest, sha256(Array.from({ length: total / MiB }, () => chunk)));
    await eventually(() => proxy.connections === 0, WAIT_MS, 'the tunneled connection to close');
  } finally {
    await proxy.close();
    source.close();
  }
});
