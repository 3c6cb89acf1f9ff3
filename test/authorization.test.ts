/**
 * Authorization on both ends of the tunnel. At the server, per-cluster client authorization
 * (--client-authorization): on both frontends, over mTLS and unix sockets, a client reaches
 * the clusters whose rules match its certificate (CN, O, DNS SAN) or its unix socket, and is
 * refused the others: HTTP-CONNECT with 403 and the reason, gRPC with the reason in
 * DIAL_RSP. At the agent, the dial allow-list (--allow-dial). Refusals are logged and
 * counted; invalid configuration stops the binary with the entry at fault.
 */
import test from 'ava';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { dialHttpConnect, ProxyError } from '../lib/client/http-connect-dialer.js';
import { dialGrpc } from '../lib/client/grpc-dialer.js';
import { DialError } from '../lib/mux/dialing-mux.js';
import { FileTlsSource, type TlsSource } from '../lib/pki/tls-source.js';
import { issueFromLocalCa } from '../lib/pki/local-pki.js';
import { DialAllowList } from '../lib/agent/dial-allow-list.js';
import { authorizeClients, parseClientAuthorization } from '../lib/server/authorization.js';
import { echoTarget, exchange, httpGet, metric, runToEnd, sha256, startAgent, startServer, workspace, type Target } from './helpers/system.js';

/** Sends 256 KiB through `socket` and checks that the same bytes (length and sha256) come back. */
async function roundTrip(socket: NodeJS.ReadWriteStream & { end(): unknown; destroy(): unknown }): Promise<boolean> {
  const payload = randomBytes(256 * 1024);
  const digest = await exchange(socket, payload, payload.length);
  socket.destroy();
  return digest === sha256(payload);
}

test('clients reach the clusters their rules name, on HTTP-CONNECT and gRPC, over mTLS and unix sockets; others are refused with the reason, logged and counted', async (t) => {
  const ws = await workspace();
  t.teardown(() => ws.cleanup());
  const rules = join(ws.dir, 'authorization.json');
  writeFileSync(rules, JSON.stringify({
    clusters: {
      'cluster-a': [{ cn: 'tunnel-client', o: 'tunnel:clients' }, { uds: true }],
      'cluster-b': [{ dns: 'ops.hub.example' }],
      '*': [{ cn: 'admin' }],
    },
  }));
  const issued = join(ws.dir, 'issued');
  const ops = await issueFromLocalCa(ws.dir, { kind: 'client', commonName: 'ops', dnsNames: ['ops.hub.example'], outDir: issued });
  const admin = await issueFromLocalCa(ws.dir, { kind: 'client', commonName: 'admin', outDir: issued });
  const tlsOf = (cert: string, key: string): Promise<TlsSource> => FileTlsSource.load({ ca: ws.pki.caCert, cert, key, role: 'test client' });
  const clients = {
    default: await tlsOf(ws.pki.clientCert, ws.pki.clientKey),
    ops: await tlsOf(ops.cert, ops.key),
    admin: await tlsOf(admin.cert, admin.key),
  };
  const target: Target = await echoTarget();
  t.teardown(() => target.close());
  const server = await startServer(ws, [`--client-authorization=${rules}`]);
  t.teardown(() => server.stop());
  for (const cluster of ['cluster-a', 'cluster-b']) {
    const agent = await startAgent(ws, server, cluster);
    t.teardown(() => agent.stop());
  }
  t.regex(server.proc.output, /client authorization .*clusters=cluster-a,cluster-b,\*/);
  const connect = (tls: TlsSource, cluster: string) => dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, `${cluster}:${target.port}`);
  const connectUds = (cluster: string) => dialHttpConnect({ path: server.connectUds }, `${cluster}:${target.port}`);
  const grpc = (tls: TlsSource, cluster: string) => dialGrpc({ host: '127.0.0.1', port: server.grpcPort, tls }, `${cluster}:${target.port}`);
  const grpcUds = (cluster: string) => dialGrpc({ uds: server.grpcUds }, `${cluster}:${target.port}`);

  // Allowed: by CN and O, by DNS SAN, by the "*" entry, and unix-socket clients by "uds".
  t.true(await roundTrip(await connect(clients.default, 'cluster-a')));
  t.true(await roundTrip(await connect(clients.ops, 'cluster-b')));
  t.true(await roundTrip(await connect(clients.admin, 'cluster-a')));
  t.true(await roundTrip(await connect(clients.admin, 'cluster-b')));
  t.true(await roundTrip(await connectUds('cluster-a')));
  t.true(await roundTrip(await grpc(clients.default, 'cluster-a')));
  t.true(await roundTrip(await grpc(clients.ops, 'cluster-b')));
  t.true(await roundTrip(await grpcUds('cluster-a')));

  // Refused on HTTP-CONNECT: 403 with the reason.
  for (const [what, dial] of [
    ['default client to cluster-b', () => connect(clients.default, 'cluster-b')],
    ['ops to cluster-a', () => connect(clients.ops, 'cluster-a')],
    ['unix socket to cluster-b', () => connectUds('cluster-b')],
    ['default client to an unlisted cluster', () => connect(clients.default, 'cluster-c')],
  ] as const) {
    const err = await t.throwsAsync(dial(), { instanceOf: ProxyError }, what);
    t.is(err?.statusCode, 403, what);
    t.regex(err?.body ?? '', /may not reach cluster "cluster-[bac]"/, what);
  }
  const unlisted = await t.throwsAsync(connect(clients.default, 'cluster-c'), { instanceOf: ProxyError });
  t.regex(unlisted?.body ?? '', /no rule of cluster "cluster-c" in --client-authorization matches/);
  const byCertificate = await t.throwsAsync(connect(clients.ops, 'cluster-a'), { instanceOf: ProxyError });
  t.regex(byCertificate?.body ?? '', /CN=ops, O=tunnel:clients; DNS:ops\.hub\.example/);

  // Refused on gRPC: the reason is the DIAL_RSP error.
  const grpcRefused = await t.throwsAsync(grpc(clients.default, 'cluster-b'), { instanceOf: DialError });
  t.regex(grpcRefused?.message ?? '', /CN=tunnel-client, O=tunnel:clients\) may not reach cluster "cluster-b"/);
  const udsRefused = await t.throwsAsync(grpcUds('cluster-b'), { instanceOf: DialError });
  t.regex(udsRefused?.message ?? '', /a unix-socket client \(no certificate\) may not reach cluster "cluster-b"/);

  // Logged with the subject and reason, and counted per frontend.
  t.regex(server.proc.output, /CONNECT refused .*certificate="?CN=tunnel-client, O=tunnel:clients"? .*may not reach cluster/);
  t.regex(server.proc.output, /gRPC dial refused .*may not reach cluster \\"cluster-b\\"/);
  const { body } = await httpGet(server.healthPort, '/metrics');
  t.regex(body, /frontend_dials_refused_total\{frontend="http-connect",reason="unauthorized"\} 6\b/);
  t.regex(body, /frontend_dials_refused_total\{frontend="grpc",reason="unauthorized"\} 2\b/);
  t.regex(body, /http_connect_requests_total\{outcome="forbidden"\} 6\b/);

  // The allowed connections still work after the refusals.
  t.true(await roundTrip(await grpcUds('cluster-a')));
  t.is(server.proc.child.exitCode, null);
});

test('an invalid --client-authorization file stops the server with the entry at fault', async (t) => {
  const ws = await workspace();
  try {
    const cases: Array<[unknown, RegExp]> = [
      [{ clusters: { 'cluster-a': [{ cm: 'x' }] } }, /clusters\["cluster-a"\]\[0\] has an unknown field "cm"/],
      [{ clusters: { 'cluster-a': [{ cn: 'x' }, {}] } }, /clusters\["cluster-a"\]\[1\] is empty/],
      [{ clusters: { 'cluster-a': [{ uds: true, cn: 'x' }] } }, /clusters\["cluster-a"\]\[0\] mixes uds with cn/],
      [{ clusters: { 'cluster-a': { cn: 'x' } } }, /clusters\["cluster-a"\] must be a list of rules/],
      [{ clusters: { 'bad name!': [] } }, /"bad name!" is not a cluster name/],
      [{ cluster: {} }, /unknown field "cluster"/],
    ];
    for (const [content, message] of cases) {
      const file = join(ws.dir, 'authorization.json');
      writeFileSync(file, JSON.stringify(content));
      const result = await runToEnd('tunnel-server', [`--state-dir=${ws.dir}`, `--client-authorization=${file}`, '--agent-port=0', '--server-port=0', '--health-port=off']);
      t.is(result.code, 2, result.stderr);
      t.regex(result.stderr, message);
      t.regex(result.stderr, /--client-authorization: /);
    }
    writeFileSync(join(ws.dir, 'broken.json'), '{ "clusters": ');
    const broken = await runToEnd('tunnel-server', [`--state-dir=${ws.dir}`, `--client-authorization=${join(ws.dir, 'broken.json')}`]);
    t.is(broken.code, 2);
    t.regex(broken.stderr, /broken\.json is not JSON/);
  } finally {
    ws.cleanup();
  }
});

test('the agent dials only what --allow-dial allows: a CIDR through a host alias, a name; refusals reach the client (502, DIAL_RSP) and are logged and counted', async (t) => {
  const ws = await workspace();
  t.teardown(() => ws.cleanup());
  const allowed = await echoTarget();
  t.teardown(() => allowed.close());
  const other = await echoTarget();
  t.teardown(() => other.close());
  const server = await startServer(ws);
  t.teardown(() => server.stop());
  // cluster-a is aliased to 127.0.0.1: its CIDR entries are checked against that address.
  const byNetwork = await startAgent(ws, server, 'cluster-a', ['--allow-dial=10.0.0.0/8:*', `--allow-dial=127.0.0.0/8:${allowed.port}`]);
  t.teardown(() => byNetwork.stop());
  const byName = await startAgent(ws, server, 'cluster-b', [`--allow-dial=cluster-b:${other.port},*.svc.cluster.local:*`]);
  t.teardown(() => byName.stop());
  t.regex(byNetwork.proc.output, new RegExp(`dial allow-list allow=10\\.0\\.0\\.0/8:\\*,127\\.0\\.0\\.0/8:${allowed.port}`));
  const tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
  const connect = (address: string) => dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, address);

  t.true(await roundTrip(await connect(`cluster-a:${allowed.port}`)));
  t.true(await roundTrip(await dialGrpc({ uds: server.grpcUds }, `cluster-a:${allowed.port}`)));
  t.true(await roundTrip(await connect(`cluster-b:${other.port}`)));

  // Resolved (through the alias) to an address no entry allows for that port.
  const outside = await t.throwsAsync(connect(`cluster-a:${other.port}`), { instanceOf: ProxyError });
  t.is(outside?.statusCode, 502);
  t.regex(outside?.body ?? '', new RegExp(`dial tcp cluster-a:${other.port}: not allowed by this agent's --allow-dial list \\(cluster-a is 127\\.0\\.0\\.1, in no allowed network\\)`));
  // A name entry allows that name and port only.
  const wrongPort = await t.throwsAsync(connect(`cluster-b:${allowed.port}`), { instanceOf: ProxyError });
  t.is(wrongPort?.statusCode, 502);
  t.regex(wrongPort?.body ?? '', new RegExp(`dial tcp cluster-b:${allowed.port}: not allowed by this agent's --allow-dial list$`, 'm'));
  const grpcRefused = await t.throwsAsync(dialGrpc({ uds: server.grpcUds }, `cluster-b:${allowed.port}`), { instanceOf: DialError });
  t.regex(grpcRefused?.message ?? '', /not allowed by this agent's --allow-dial list/);

  t.is(await metric(byNetwork.healthPort, 'konnectivity_network_proxy_agent_endpoint_dial_failure_total{reason="not_allowed"}'), 1);
  t.is(await metric(byName.healthPort, 'konnectivity_network_proxy_agent_endpoint_dial_failure_total{reason="not_allowed"}'), 2);
  t.regex(byName.proc.output, /dial to target failed address=cluster-b:\d+ reason="dial tcp cluster-b:\d+: not allowed by this agent's --allow-dial list"/);
  // Refused dials left nothing open; allowed ones still work.
  t.is(other.open, 0);
  t.true(await roundTrip(await connect(`cluster-b:${other.port}`)));
});

test('an invalid --allow-dial entry stops the agent with the entry and the expected form', async (t) => {
  const ws = await workspace();
  try {
    for (const [value, message] of [
      ['10.0.0.0/33:443', /--allow-dial=10\.0\.0\.0\/33:443: "10\.0\.0\.0\/33" has no valid prefix length/],
      ['cluster-a', /--allow-dial=cluster-a is not HOST:PORT/],
      ['cluster-a:http', /--allow-dial=cluster-a:http: "http" is not a port/],
      ['bad host!:443', /"bad host!" is not a host/],
    ] as const) {
      const result = await runToEnd('tunnel-agent', [`--state-dir=${ws.dir}`, '--cluster-name=cluster-a', `--allow-dial=${value}`, '--health-port=off']);
      t.is(result.code, 2, result.stderr);
      t.regex(result.stderr, message);
    }
  } finally {
    ws.cleanup();
  }
});

test('allow-list entries: names case-insensitively, *.domain below the domain only, port ranges, IPv4 and IPv6 networks', (t) => {
  const list = new DialAllowList(['Kubernetes.Default:443', '*.svc.cluster.local:8000-8999', '10.0.0.0/8:*,[fd00::/8]:443', '192.168.1.7:22']);
  t.true(list.allowsName('kubernetes.default', 443));
  t.false(list.allowsName('kubernetes.default', 444));
  t.true(list.allowsName('api.NS.svc.cluster.local', 8080));
  t.false(list.allowsName('svc.cluster.local', 8080));
  t.false(list.allowsName('evil-svc.cluster.local', 8080));
  t.false(list.allowsName('api.ns.svc.cluster.local', 9000));
  // IP hosts match networks by name too; other names need their address.
  t.true(list.allowsName('10.1.2.3', 1));
  t.false(list.allowsName('db.example', 1));
  t.true(list.hasAddressRules(1));
  t.false(new DialAllowList(['a.example:80', '10.0.0.0/8:443']).hasAddressRules(80), 'a port that only name entries cover needs no lookup');
  t.true(list.allowsAddress('10.255.0.1', 5432));
  t.true(list.allowsAddress('::ffff:10.0.0.1', 5432));
  t.true(list.allowsAddress('fd12::1', 443));
  t.false(list.allowsAddress('fd12::1', 80));
  t.true(list.allowsAddress('192.168.1.7', 22));
  t.false(list.allowsAddress('192.168.1.8', 22));
  t.false(list.allowsAddress('11.0.0.1', 443));
  t.true(new DialAllowList([]).allowsEverything);
  t.throws(() => new DialAllowList(['fd00::/8:443']), { message: /is not HOST:PORT .*IPv6 in brackets/ });
  t.throws(() => new DialAllowList(['a:9-1']), { message: /"9-1" is not a port/ });
});

test('authorization rules: every field a rule gives must match; "*" rules apply to every cluster; unix-socket clients match only uds', (t) => {
  const policy = authorizeClients(parseClientAuthorization(JSON.stringify({
    clusters: {
      'cluster-a': [{ cn: 'kube-apiserver', o: 'system:masters' }, { uri: 'spiffe://hub/ns/ops/sa/deployer' }],
      '*': [{ uds: true }],
    },
  }), 'rules.json'));
  const peer = (commonName: string, organization: string[], uris: string[] = []) => ({ commonName, organization, dnsNames: [], uris });
  t.is(policy(peer('kube-apiserver', ['system:masters']), 'cluster-a:443'), undefined);
  t.regex(policy(peer('kube-apiserver', ['other']), 'cluster-a:443') ?? '', /may not reach cluster "cluster-a": no rule of cluster "cluster-a"/);
  t.is(policy(peer('anyone', [], ['spiffe://hub/ns/ops/sa/deployer']), 'cluster-a:6443'), undefined);
  t.regex(policy(peer('anyone', [], ['spiffe://hub/ns/ops/sa/other']), 'cluster-a:6443') ?? '', /URI:spiffe:\/\/hub\/ns\/ops\/sa\/other\) may not reach/);
  t.is(policy(undefined, 'cluster-a:443'), undefined);
  t.is(policy(undefined, 'cluster-z:443'), undefined);
  t.regex(policy(peer('kube-apiserver', ['system:masters']), 'cluster-z:443') ?? '', /may not reach cluster "cluster-z"/);
  const strict = authorizeClients(parseClientAuthorization('{ "clusters": { "cluster-a": [{ "cn": "x" }] } }', 'strict.json'));
  t.regex(strict(undefined, 'cluster-b:443') ?? '', /no entry of --client-authorization names cluster "cluster-b"/);
});
