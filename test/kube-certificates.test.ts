/**
 * Certificates from the hub's CSR API, through the real binaries and the Kubernetes API
 * double: issuance for server and agent from nothing, reuse after a restart, rotation under
 * load without a dropped tunnel, denied and unanswered requests retried with back-off, an
 * API server that goes away, a CA bundle that changes, and bad input that gets a clear error.
 */
import test, { type ExecutionContext } from 'ava';
import { X509Certificate, createHash } from 'node:crypto';
import { once } from 'node:events';
import { connect as tlsConnect } from 'node:tls';
import { CertificatesV1Api, CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { join } from 'node:path';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import {
  workspace, startServer, startAgent, echoTarget, exchange, sha256, run, runToEnd, eventually, httpGet, type Workspace, type ServerHandle,
} from './helpers/system.js';
import { startHub, HUB_NAMESPACE, type Hub } from '../harness/hub.js';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';
import { randomBytes } from 'node:crypto';
import { createCa, issueCertificate } from '../lib/pki/certificates.js';
import { createCsr } from '../lib/pki/csr.js';
import { transferTarget, cyclicDigest } from './helpers/transfer-target.js';

const CSRS = ['certificates.k8s.io', 'certificatesigningrequests'] as const;

function serverFlags(ws: Workspace, hub: Hub, extra: string[] = []): string[] {
  return ['--cert-source=kube', `--kubeconfig=${hub.serverKubeconfig}`, `--namespace=${HUB_NAMESPACE}`, `--server-ca-cert=${ws.pki.caCert}`, ...extra];
}

function agentFlags(hub: Hub, cluster: string, extra: string[] = []): string[] {
  return ['--cert-source=kube', `--hub-kubeconfig=${hub.agentKubeconfig(cluster)}`, ...extra];
}

async function clientTls(ws: Workspace) {
  return FileTlsSource.load({ ca: join(ws.dir, 'tunnel-ca.crt'), cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
}


/** Writes the tunnel CA bundle the server published, for clients of the test. */
function saveBundle(ws: Workspace, hub: Hub): void {
  const bundle = hub.api.objects.get('', 'configmaps', 'tunnel-ca', HUB_NAMESPACE) as { data: Record<string, string> };
  writeFileSync(join(ws.dir, 'tunnel-ca.crt'), bundle.data['ca.crt']);
}

/** The serial of the certificate a TLS port presents now. */
async function servedSerial(ws: Workspace, port: number): Promise<string> {
  const socket = tlsConnect({ host: '127.0.0.1', port, ca: readFileSync(join(ws.dir, 'tunnel-ca.crt')), cert: readFileSync(ws.pki.clientCert), key: readFileSync(ws.pki.clientKey), servername: 'localhost' });
  try {
    await once(socket, 'secureConnect');
    return socket.getPeerX509Certificate()!.serialNumber;
  } finally {
    socket.destroy();
  }
}

function csrs(hub: Hub): Array<{ metadata: { name: string }; spec: { signerName: string; username: string }; status?: { conditions?: Array<{ type: string; reason: string }>; certificate?: string } }> {
  return hub.api.objects.list(...CSRS) as never;
}

test.serial('server and agent get their certificates from the CSR API, and a tunnel works with them', async (t) => {
  const ws = await workspace();
  const hub = await startHub(join(ws.dir, 'hub'), ['c1']);
  const target = await echoTarget();
  let server: ServerHandle | undefined;
  try {
    server = await startServer(ws, serverFlags(ws, hub));
    t.regex(server.proc.output, /created the tunnel CA secret=tunnel-system\/tunnel-ca/);
    t.regex(server.proc.output, /certificate issued role=tunnel-server/);
    const agent = await startAgent(ws, server, 'c1', agentFlags(hub, 'c1'));
    t.regex(agent.proc.output, /certificate issued role="tunnel-agent of cluster c1"/);
    const issued = csrs(hub);
    t.deepEqual(issued.map((c) => c.spec.signerName).sort(), ['tunnel.tkestack.io/agent', 'tunnel.tkestack.io/server'], server.proc.output + agent.proc.output);
    for (const csr of issued) {
      t.true(csr.status?.conditions?.some((c) => c.type === 'Approved' && c.reason === 'AutoApproved'), `${csr.metadata.name} approved by the tunnel server`);
      t.truthy(csr.status?.certificate, `${csr.metadata.name} signed`);
    }
    const agentCert = new X509Certificate(Buffer.from(issued.find((c) => c.spec.signerName.endsWith('/agent'))!.status!.certificate!, 'base64'));
    t.is(agentCert.subject, 'O=tunnel:agents\nCN=tunnel:agent:c1');
    t.is(agentCert.subjectAltName, undefined, 'no SANs on an agent certificate');
    t.deepEqual(agentCert.keyUsage, ['1.3.6.1.5.5.7.3.2'], 'client auth only');
    saveBundle(ws, hub);
    const payload = randomBytes(2 * 1024 * 1024);
    const socket = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls: await clientTls(ws) }, `c1:${target.port}`);
    t.is(await exchange(socket, payload, payload.length), sha256(payload));
    socket.destroy();
    // Restarts reuse the stored certificates: no new request.
    await agent.stop();
    await server.stop();
    const before = csrs(hub).length;
    server = await startServer(ws, serverFlags(ws, hub));
    t.regex(server.proc.output, /using the stored certificate role=tunnel-server/);
    const again = await startAgent(ws, server, 'c1', agentFlags(hub, 'c1'));
    t.regex(again.proc.output, /using the stored certificate role="tunnel-agent of cluster c1"/);
    t.is(csrs(hub).length, before, 'no new certificate signing request after the restart');
    await again.stop();
  } finally {
    await server?.stop();
    await target.close();
    await hub.close();
    ws.cleanup();
  }
});

/** Lines of a process's output that match. */
function count(output: string, pattern: RegExp): number {
  return output.split('\n').filter((line) => pattern.test(line)).length;
}

test.serial('certificates of seconds rotate under a 1 GiB transfer: bytes intact, the tunnel never reconnects, new handshakes get new certificates', async (t) => {
  const ws = await workspace();
  const hub = await startHub(join(ws.dir, 'hub'), ['c1']);
  const target = await transferTarget();
  // The signer issues three-second certificates whatever is asked: renewals every 2 s or so.
  const server = await startServer(ws, serverFlags(ws, hub, ['--max-cert-lifetime=3s']));
  const agent = await startAgent(ws, server, 'c1', agentFlags(hub, 'c1'));
  try {
    saveBundle(ws, hub);
    const tls = await clientTls(ws);
    const serials = new Set<string>();
    const sampling = setInterval(() => { void servedSerial(ws, server.connectPort).then((s) => serials.add(s), () => undefined); }, 500);
    const bytes = 1024 * 1024 * 1024;
    const socket = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, `c1:${target.port}`);
    socket.write(`cycle ${bytes}\n`);
    const hash = createHash('sha256');
    let got = 0;
    socket.on('data', (d: Buffer) => { hash.update(d); got += d.length; });
    await once(socket, 'end');
    clearInterval(sampling);
    t.is(got, bytes);
    t.is(hash.digest('hex'), cyclicDigest(bytes), 'sha256 of the whole GiB');
    const serverRotations = count(server.proc.output, /new TLS certificate in use listener=http-connect/);
    const agentRenewals = count(agent.proc.output, /certificate issued role="tunnel-agent/) - 1;
    t.true(serverRotations >= 1, `the server's certificate was swapped ${serverRotations} times during the transfer`);
    t.true(agentRenewals >= 1, `the agent renewed ${agentRenewals} times during the transfer`);
    t.true(serials.size >= 2, `new handshakes saw ${serials.size} different certificates`);
    for (const serial of serials) t.regex(server.proc.output, new RegExp(`(signed a certificate|certificate issued)[^\\n]*serial=${serial}`), `${serial} was issued by the CSR flow`);
    t.is(count(server.proc.output, /agent connected/), 1, 'the agent connected once');
    t.is(count(agent.proc.output, /connected to tunnel server/), 1);
    t.notRegex(agent.proc.output, /lost the stream/);
  } finally {
    await agent.stop();
    await server.stop();
    await target.close();
    await hub.close();
    ws.cleanup();
  }
});

test.serial('a denied request is retried with back-off and says why; an unanswered one times out and is made again', async (t) => {
  const ws = await workspace();
  const hub = await startHub(join(ws.dir, 'hub'), ['c1', 'c2']);
  try {
    await deniedThenRetried(t, ws, hub);
    await unansweredThenRetried(t, ws, hub);
  } finally {
    await hub.close();
    ws.cleanup();
  }
});

async function deniedThenRetried(t: ExecutionContext, ws: Workspace, hub: Hub): Promise<void> {
  const server = await startServer(ws, serverFlags(ws, hub));
  try {
    // Cluster c2's bootstrap account may not get a certificate for c1's agent.
    const impostor = run('tunnel-agent', [`--state-dir=${join(ws.dir, 'impostor')}`, '--cluster-name=c1', `--tunnelserver-addr=127.0.0.1:${server.agentPort}`,
      '--health-bind-address=127.0.0.1', '--health-port=0', '--cert-source=kube', `--hub-kubeconfig=${hub.agentKubeconfig('c2')}`]);
    try {
      await impostor.waitFor(/certificate request failed; retrying[^\n]*in=\d+ms[^\n]*\n[^]*certificate request failed; retrying[^\n]*\n[^]*certificate request failed; retrying/, 30_000);
      const delays = [...impostor.output.matchAll(/certificate request failed; retrying[^\n]* in=(\d+)ms/g)].map((m) => Number(m[1]));
      t.true(delays[0] >= 1_800 && delays[0] <= 2_200, `first retry after about 2 s: ${delays[0]}`);
      t.true(delays[1] > delays[0] * 1.5 && delays[2] > delays[1] * 1.5, `each retry waits about twice as long: ${delays.join(', ')}`);
      t.regex(impostor.output, /was denied: DeniedRequester \(Denied by the tunnel server, rule requester: system:serviceaccount:tunnel-system:tunnel-agent-c2 may not request the certificate of cluster \\?"c1\\?"'s agent/);
      const denied = csrs(hub).filter((c) => c.status?.conditions?.some((x) => x.type === 'Denied' && x.reason === 'DeniedRequester'));
      t.true(denied.length >= 3, 'each attempt is a new request, each denied');
      t.false(csrs(hub).some((c) => c.spec.username.endsWith('tunnel-agent-c2') && c.status?.certificate), 'nothing was issued to it');
      // Waiting for its certificate, the agent answers on its health port, and says why it is not ready.
      const healthPort = Number((await impostor.waitFor(/service=health address=\S+:(\d+)/))[1]);
      t.is((await httpGet(healthPort, '/readyz')).status, 503);
      const { body } = await httpGet(healthPort, '/metrics');
      const denials = Number(/_certificate_requests_total\{[^}]*result="denied"[^}]*\} (\d+)/.exec(body)?.[1] ?? 0);
      t.true(denials >= 3, `certificate_requests_total counts ${denials} denials`);
    } finally {
      await impostor.stop();
    }
  } finally {
    await server.stop();
  }
}

/** No approver at all: the request gets no answer within --csr-timeout, and is made again. */
async function unansweredThenRetried(t: ExecutionContext, ws: Workspace, hub: Hub): Promise<void> {
  const quiet = await startServer(ws, [], 'local');
  const agent = run('tunnel-agent', [`--state-dir=${join(ws.dir, 'waiting')}`, '--cluster-name=c1', `--tunnelserver-addr=127.0.0.1:${quiet.agentPort}`,
    '--health-port=off', '--cert-source=kube', `--hub-kubeconfig=${hub.agentKubeconfig('c1')}`, '--csr-timeout=1s']);
  try {
    await agent.waitFor(/got no certificate within 1 s: is the approver[^\n]* running\?/, 20_000);
    await agent.waitFor(/got no certificate within 1 s[^]*got no certificate within 1 s/, 20_000);
    t.true(csrs(hub).filter((c) => c.spec.username.endsWith('tunnel-agent-c1') && !c.status?.conditions?.length).length >= 2, 'the unanswered requests are pending');
  } finally {
    await agent.stop();
    await quiet.stop();
  }
}

test.serial('an API server that is away at start, or goes away later, delays certificates but stops nothing', async (t) => {
  const ws = await workspace();
  const hub = await startHub(join(ws.dir, 'hub'), ['c1']);
  const target = await echoTarget();
  const server = await startServer(ws, serverFlags(ws, hub, ['--max-cert-lifetime=6s']));
  try {
    saveBundle(ws, hub);
    await hub.api.stop();
    const agent = run('tunnel-agent', [`--state-dir=${ws.dir}`, '--cluster-name=c1', `--tunnelserver-addr=127.0.0.1:${server.agentPort}`, '--health-port=off',
      '--host-alias=c1=127.0.0.1', '--cert-source=kube', `--hub-kubeconfig=${hub.agentKubeconfig('c1')}`]);
    try {
      await agent.waitFor(/cannot follow Kubernetes objects; retrying[^\n]*the API server is not reachable \(ECONNREFUSED\)/, 20_000);
      t.notRegex(agent.output, /connected to tunnel server/);
      await hub.api.start();
      await agent.waitFor(/connected to tunnel server/, 40_000);
      // Mid-life: renewals fail while the API server is away; the tunnel goes on.
      await hub.api.stop();
      await server.proc.waitFor(/certificate request failed; retrying[^\n]*not reachable/, 20_000);
      const tls = await clientTls(ws);
      const payload = randomBytes(256 * 1024);
      const socket = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, `c1:${target.port}`);
      t.is(await exchange(socket, payload, payload.length), sha256(payload), 'a new connection through the tunnel works meanwhile');
      socket.destroy();
      const issuedBefore = count(server.proc.output, /certificate issued role=tunnel-server/);
      await hub.api.start();
      await eventually(() => count(server.proc.output, /certificate issued role=tunnel-server/) > issuedBefore, 30_000, 'the server renewed once the API server was back');
      t.pass();
    } finally {
      await agent.stop();
    }
  } finally {
    await server.stop();
    await target.close();
    await hub.close();
    ws.cleanup();
  }
});

test.serial('a CA added to the bundle ConfigMap is trusted from the next handshake', async (t) => {
  const ws = await workspace();
  const hub = await startHub(join(ws.dir, 'hub'), ['c1']);
  const server = await startServer(ws, serverFlags(ws, hub));
  const other = createCa('another tunnel CA');
  const cert = issueCertificate(other, { commonName: 'tunnel:agent:c3', organization: ['tunnel:agents'], usage: 'client' });
  const dir = join(ws.dir, 'other');
  mkdirSync(dir);
  writeFileSync(join(dir, 'c3.crt'), cert.certPem);
  writeFileSync(join(dir, 'c3.key'), cert.keyPem, { mode: 0o600 });
  saveBundle(ws, hub);
  const agentArgs = [`--tunnelserver-addr=127.0.0.1:${server.agentPort}`, '--health-port=off', '--cluster-name=c3',
    `--ca-cert=${join(ws.dir, 'tunnel-ca.crt')}`, `--agent-cert=${join(dir, 'c3.crt')}`, `--agent-key=${join(dir, 'c3.key')}`];
  try {
    const refused = run('tunnel-agent', agentArgs);
    await refused.waitFor(/cannot connect to the tunnel server; retrying/);
    await refused.stop();
    const configMap = hub.api.objects.get('', 'configmaps', 'tunnel-ca', HUB_NAMESPACE) as { data: Record<string, string> };
    // A broken bundle first: ignored, the server keeps the one it has.
    hub.api.objects.put('', 'configmaps', { ...configMap, data: { 'ca.crt': '-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n' } });
    await server.proc.waitFor(/ignoring a CA bundle that is not usable; keeping the previous one/);
    hub.api.objects.put('', 'configmaps', { ...configMap, data: { 'ca.crt': `${configMap.data['ca.crt'].trim()}\n${other.certPem}` } });
    await server.proc.waitFor(/the CA bundle changed/);
    const accepted = run('tunnel-agent', agentArgs);
    try {
      await accepted.waitFor(/connected to tunnel server/);
      t.pass();
    } finally {
      await accepted.stop();
    }
  } finally {
    await server.stop();
    await hub.close();
    ws.cleanup();
  }
});

test.serial('bad input gets a clear error naming it: a broken CA Secret, a kubeconfig that does not parse, a request for another signer', async (t) => {
  const ws = await workspace();
  const hub = await startHub(join(ws.dir, 'hub'), ['c1']);
  try {
    hub.api.objects.put('', 'secrets', { apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/tls', metadata: { name: 'tunnel-ca', namespace: HUB_NAMESPACE }, data: { 'tls.crt': Buffer.from('not a certificate').toString('base64'), 'tls.key': Buffer.from('x').toString('base64') } });
    const broken = await runToEnd('tunnel-server', [`--state-dir=${ws.dir}`, '--bind-address=127.0.0.1', '--agent-port=0', '--reverse-proxy-port=off', '--server-port=off', '--health-port=off', ...serverFlags(ws, hub)]);
    t.is(broken.code, 1);
    t.regex(broken.stderr, /Secret tunnel-system\/tunnel-ca does not hold a usable CA: .*fix it, or delete it/);
    hub.api.objects.delete('', 'secrets', 'tunnel-ca', HUB_NAMESPACE);

    const bad = join(ws.dir, 'bad.kubeconfig');
    writeFileSync(bad, 'clusters: [this is: not: yaml');
    const unparsed = await runToEnd('tunnel-server', [`--state-dir=${ws.dir}`, '--cert-source=kube', `--kubeconfig=${bad}`]);
    t.is(unparsed.code, 2);
    t.regex(unparsed.stderr, new RegExp(`the kubeconfig ${bad} does not parse`));

    // A request for a signer not ours is left as it is.
    const admin = hub.api.issueClientCertificate({ username: 'admin', groups: ['system:masters'] });
    const kc = new KubeConfig();
    kc.loadFromString(hub.api.kubeconfig({ cert: admin.cert, key: admin.key }));
    await kc.makeApiClient(CertificatesV1Api).createCertificateSigningRequest({ body: {
      metadata: { name: 'someone-elses' },
      spec: { request: Buffer.from(createCsr({ commonName: 'tunnel:agent:c1', organization: ['tunnel:agents'] }).csrPem).toString('base64'), signerName: 'example.com/other', usages: ['digital signature', 'client auth'] },
    } });
    const server = await startServer(ws, serverFlags(ws, hub));
    try {
      await server.proc.waitFor(/approving and signing certificate requests/);
      await new Promise((resolve) => setTimeout(resolve, 500));
      const untouched = hub.api.objects.get(...CSRS, 'someone-elses') as { status?: { conditions?: unknown[] } };
      t.deepEqual(untouched.status?.conditions ?? [], [], 'another signer\'s request is none of the approver\'s business');
    } finally {
      await server.stop();
    }
  } finally {
    await hub.close();
    ws.cleanup();
  }
});

/** A token of a hub service account, from the API double's TokenRequest, as a file. */
async function hubToken(ws: Workspace, hub: Hub, account: string, audience: string): Promise<string> {
  const admin = hub.api.issueClientCertificate({ username: 'admin', groups: ['system:masters'] });
  const kc = new KubeConfig();
  kc.loadFromString(hub.api.kubeconfig({ cert: admin.cert, key: admin.key }));
  const issued = await kc.makeApiClient(CoreV1Api).createNamespacedServiceAccountToken({
    name: account, namespace: HUB_NAMESPACE, body: { spec: { audiences: [audience], expirationSeconds: 3600 } },
  });
  const path = join(ws.dir, `${account}-${audience}.token`);
  writeFileSync(path, issued.status!.token, { mode: 0o600 });
  return path;
}

test.serial('agents authenticated by service-account token: the right cluster\'s account is admitted, another\'s or a wrong audience refused', async (t) => {
  const ws = await workspace();
  const hub = await startHub(join(ws.dir, 'hub'), ['c1', 'c2']);
  const server = await startServer(ws, [`--kubeconfig=${hub.serverKubeconfig}`, `--agent-namespace=${HUB_NAMESPACE}`,
    '--agent-service-account=tunnel-agent-{cluster}', '--authentication-audience=tunnel-server']);
  try {
    const agentWith = (token: string) => run('tunnel-agent', [`--state-dir=${ws.dir}`, '--cluster-name=c1', `--tunnelserver-addr=127.0.0.1:${server.agentPort}`,
      '--health-port=off', `--service-account-token-path=${token}`]);
    const other = agentWith(await hubToken(ws, hub, 'tunnel-agent-c2', 'tunnel-server'));
    await other.waitFor(/UNAUTHENTICATED: the agent's token belongs to system:serviceaccount:tunnel-system:tunnel-agent-c2, not to system:serviceaccount:tunnel-system:tunnel-agent-c1/);
    await other.stop();
    const wrongAudience = agentWith(await hubToken(ws, hub, 'tunnel-agent-c1', 'somewhere-else'));
    await wrongAudience.waitFor(/UNAUTHENTICATED: the agent's token was not accepted/);
    await wrongAudience.stop();
    const none = run('tunnel-agent', [`--state-dir=${ws.dir}`, '--cluster-name=c1', `--tunnelserver-addr=127.0.0.1:${server.agentPort}`, '--health-port=off']);
    await none.waitFor(/UNAUTHENTICATED: expected one authorization header with a bearer token/);
    await none.stop();
    const right = agentWith(await hubToken(ws, hub, 'tunnel-agent-c1', 'tunnel-server'));
    try {
      await right.waitFor(/connected to tunnel server/);
      t.true(hub.api.requests.some((r) => r.path.startsWith('/apis/authentication.k8s.io/v1/tokenreviews') && r.status === 201), 'the server asked the hub');
    } finally {
      await right.stop();
    }
  } finally {
    await server.stop();
    await hub.close();
    ws.cleanup();
  }
});

test.serial('the server\'s certificate holds its Service\'s names and addresses, and is renewed when they change', async (t) => {
  const ws = await workspace();
  const hub = await startHub(join(ws.dir, 'hub'), []);
  const service = {
    apiVersion: 'v1', kind: 'Service', metadata: { name: 'tunnel-server', namespace: HUB_NAMESPACE, annotations: { 'tunnel.tkestack.io/public-address': 'tunnel.public.example, 198.51.100.4:443, not a host' } },
    spec: { type: 'LoadBalancer', ports: [{ name: 'agents', port: 10262 }] },
  };
  const admin = hub.api.issueClientCertificate({ username: 'admin', groups: ['system:masters'] });
  const kc = new KubeConfig();
  kc.loadFromString(hub.api.kubeconfig({ cert: admin.cert, key: admin.key }));
  await kc.makeApiClient(CoreV1Api).createNamespacedService({ namespace: HUB_NAMESPACE, body: service });
  const ingress = (ip: string) => {
    const current = hub.api.objects.get('', 'services', 'tunnel-server', HUB_NAMESPACE) as Record<string, unknown>;
    hub.api.objects.put('', 'services', { ...current, status: { loadBalancer: { ingress: [{ ip }, { hostname: 'tunnel.example.com' }] } } });
  };
  ingress('203.0.113.10');
  const server = await startServer(ws, serverFlags(ws, hub, [`--server-service=${HUB_NAMESPACE}/tunnel-server`]));
  try {
    const latest = () => {
      // The newest by resourceVersion (a list is in name order).
      const issued = csrs(hub).filter((c) => c.spec.signerName.endsWith('/server') && c.status?.certificate)
        .sort((a, b) => Number((a.metadata as { resourceVersion?: string }).resourceVersion) - Number((b.metadata as { resourceVersion?: string }).resourceVersion));
      return new X509Certificate(Buffer.from(issued.at(-1)!.status!.certificate!, 'base64'));
    };
    const clusterIP = (hub.api.objects.get('', 'services', 'tunnel-server', HUB_NAMESPACE) as { spec: { clusterIP: string } }).spec.clusterIP;
    const sans = latest().subjectAltName ?? '';
    for (const name of ['DNS:tunnel-server.tunnel-system.svc', 'DNS:tunnel-server.tunnel-system.svc.cluster.local', 'DNS:tunnel.example.com', `IP Address:${clusterIP}`, 'IP Address:203.0.113.10', 'DNS:tunnel.public.example', 'IP Address:198.51.100.4']) {
      t.true(sans.includes(name), `${name} in ${sans}`);
    }
    t.false(sans.includes('not a host'));
    t.regex(server.proc.output, /public-address entries that are not host or host:port.*entries="?not a host/);
    ingress('203.0.113.99');
    await eventually(() => (latest().subjectAltName ?? '').includes('IP Address:203.0.113.99'), 15_000, 'a certificate for the new load balancer address');
    await server.proc.waitFor(/new TLS certificate in use listener=agents/);
  } finally {
    await server.stop();
    await hub.close();
    ws.cleanup();
  }
});

test.serial('agents may use kubernetes.io/kube-apiserver-client: the tunnel approves, the hub\'s controller manager signs, the agent port trusts the hub\'s client CA', async (t) => {
  const ws = await workspace();
  const hub = await startHub(join(ws.dir, 'hub'), ['c1'], { controllerManagerSigner: true });
  hub.api.grant({ user: 'system:serviceaccount:tunnel-system:tunnel-server' }, [
    { verbs: ['approve'], apiGroups: ['certificates.k8s.io'], resources: ['signers'], resourceNames: ['kubernetes.io/kube-apiserver-client'] },
  ]);
  const clientCa = join(ws.dir, 'hub-client-ca.crt');
  writeFileSync(clientCa, hub.api.clientCaPem);
  const server = await startServer(ws, serverFlags(ws, hub, ['--agent-signer=kubernetes.io/kube-apiserver-client', `--cluster-ca-cert=${clientCa}`]));
  try {
    const agent = await startAgent(ws, server, 'c1', agentFlags(hub, 'c1', ['--signer=kubernetes.io/kube-apiserver-client']));
    try {
      const csr = csrs(hub).find((c) => c.spec.signerName === 'kubernetes.io/kube-apiserver-client')!;
      t.true(csr.status?.conditions?.some((c) => c.type === 'Approved' && c.reason === 'AutoApproved'), 'approved by the tunnel server');
      const cert = new X509Certificate(Buffer.from(csr.status!.certificate!, 'base64'));
      t.true(cert.checkIssued(new X509Certificate(hub.api.clientCaPem)), 'signed by the hub\'s client CA');
      t.regex(agent.proc.output, /connected to tunnel server/);
    } finally {
      await agent.stop();
    }
  } finally {
    await server.stop();
    await hub.close();
    ws.cleanup();
  }
});
