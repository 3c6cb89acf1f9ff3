#!/usr/bin/env node
/** tunnel-server: flags in, a running TunnelServer out. */
import { onShutdownSignal, parseCount, parseFlags, parseDuration, parseKeepAlive, parseList, parseOptionalPort, parsePort, runMain, type FlagValues } from '../lib/cli/flags.js';
import { UsageError } from '../lib/common/errors.js';
import { applyLogFormat, applyLogLevel, commonFlags } from '../lib/cli/common-flags.js';
import { resolveTls } from '../lib/pki/resolve-tls.js';
import { parseProxyStrategies } from '../lib/server/proxy-strategies.js';
import { TunnelServer } from '../lib/server/tunnel-server.js';
import { DEFAULT_AGENT_IDENTITY, parseAgentIdentityRule } from '../lib/server/agent-identity.js';
import { allPolicies, refuseAgentCertificates } from '../lib/server/client-policy.js';
import { authorizeClients, loadClientAuthorization } from '../lib/server/authorization.js';
import { AGENT_ORGANIZATION } from '../lib/pki/identities.js';
import { fileCaBundle, withTrust } from '../lib/pki/tls-source.js';
import { SERVER_METRICS_PREFIX } from '../lib/server/tunnel-server.js';
import { DEFAULT_TLS_RESUMPTION_LIFETIME_S } from '../lib/server/http-connect-frontend.js';
import { tokenReviewer } from '../lib/server/token-auth.js';
import { MetricsRegistry } from '../lib/observe/metrics.js';
import type { Logger } from '../lib/observe/log.js';
import { certificateFlags, certDirOf, hubConnection, namespaceOf, parseCertSource, parseLifetime } from '../lib/cli/kube-flags.js';
import { serverCertificates, signerNames, type KubeCertificates } from '../lib/cli/kube-certificates.js';
import { runningInCluster, type KubeConnection } from '../lib/kube/kube-config.js';
import { DEFAULT_AGENT_PORT, DEFAULT_SERVER_PORT } from '../lib/wire/protocol.js';
import { applyProcessPolicy } from '../lib/cli/process-defaults.js';
import { logger } from '../lib/observe/log.js';
import { reverseProxyConfig, reverseProxyFlags } from '../lib/cli/reverse-proxy-flags.js';
import { DEFAULT_LEASE_LABEL, ServerLeases, parseLeaseLabels } from '../lib/kube/leases.js';

const NAME = 'tunnel-server';

const FLAGS = {
  'bind-address': { type: 'string', default: '0.0.0.0', metavar: 'IP', help: 'address the agent, HTTP-CONNECT and gRPC ports listen on' },
  'agent-port': { type: 'string', default: String(DEFAULT_AGENT_PORT), metavar: 'PORT', help: 'agents\' gRPC port, mTLS (0 = any free port)' },
  'server-port': { type: 'string', default: String(DEFAULT_SERVER_PORT), metavar: 'PORT', help: 'HTTP-CONNECT frontend port, mTLS (0 = any free port; "off" turns it off)' },
  'http-connect-uds': { type: 'string', metavar: 'PATH', help: 'also serve HTTP-CONNECT on this unix socket, without TLS' },
  'uds-name': { type: 'string', metavar: 'PATH', help: 'serve the gRPC frontend (ProxyService, as kube-apiserver\'s egress selector uses it) on this unix socket' },
  'grpc-port': { type: 'string', metavar: 'PORT', help: 'serve the gRPC frontend on this TCP port with mTLS (off unless given)' },
  'ca-cert': { type: 'string', metavar: 'PATH', help: 'CA that client and agent certificates must chain to' },
  'cluster-ca-cert': { type: 'string', metavar: 'PATH', help: 'CA that agents\' certificates must chain to, when not --ca-cert (as the reference names it)' },
  'server-ca-cert': { type: 'string', metavar: 'PATH', help: 'CA that HTTP-CONNECT and gRPC clients\' certificates must chain to, when not --ca-cert (as the reference names it)' },
  'agent-identity': { type: 'string', default: DEFAULT_AGENT_IDENTITY, metavar: 'RULE', help: 'what an agent\'s certificate lets it serve: cn-prefix:PREFIX (CN is PREFIX<cluster>; it may announce that cluster only), cn (CN is the cluster), or off (anything, as the reference)' },
  'agent-organization': { type: 'string', default: AGENT_ORGANIZATION, metavar: 'O', help: 'the O an agent\'s certificate must have, and a client\'s must not ("" for no such role check)' },
  'server-cert': { type: 'string', metavar: 'PATH', help: 'server certificate (PEM)' },
  'server-key': { type: 'string', metavar: 'PATH', help: 'server private key (PEM)' },
  'cert-dns-names': { type: 'string', metavar: 'a,b', help: 'extra DNS names for the local PKI\'s server certificate' },
  'cert-ips': { type: 'string', metavar: 'IP,IP', help: 'extra IP addresses for the local PKI\'s server certificate' },
  'proxy-strategies': { type: 'string', default: 'destHost', metavar: 'LIST', help: 'how dials pick an agent, tried in order: destHost, default, defaultRoute' },
  'server-id': { type: 'string', metavar: 'ID', help: 'this server\'s id, sent to agents (default: a random UUID)' },
  'server-count': { type: 'string', default: '1', metavar: 'N', help: 'number of servers behind the agents\' address; agents keep a stream to each (with --enable-lease-controller: until the Leases are first counted, and while they cannot be)' },
  'enable-lease-controller': { type: 'boolean', default: false, help: 'count the servers by coordination.k8s.io Leases at the hub (as konnectivity v0.31+): hold and renew a Lease of this server\'s, tell agents the number of live ones, delete expired ones' },
  'lease-namespace': { type: 'string', metavar: 'NS', help: 'namespace of the servers\' Leases (default: --namespace\'s, the pod\'s, or the kubeconfig context\'s)' },
  'lease-label': { type: 'string', default: DEFAULT_LEASE_LABEL, metavar: 'K=V,...', help: 'labels of the servers\' Leases; only Leases with all of them are counted' },
  'lease-duration': { type: 'string', default: '30s', metavar: 'DURATION', help: 'how long a Lease holds after its last renewal' },
  'lease-renew-interval': { type: 'string', default: '15s', metavar: 'DURATION', help: 'how often this server renews its Lease, recounts, and deletes expired Leases (shorter than --lease-duration)' },
  'ready-min-agents': { type: 'string', default: '1', metavar: 'N', help: '/readyz answers 503 while fewer than N agents are connected (0: ready without agents, e.g. when the agents\' Service follows readiness)' },
  'dial-timeout': { type: 'string', default: '30s', metavar: 'DURATION', help: 'how long a client waits for the agent to answer a dial' },
  'handshake-timeout': { type: 'string', default: '10s', metavar: 'DURATION', help: 'how long an HTTP-CONNECT or reverse-proxy client has for its TLS handshake before it is disconnected' },
  'tls-resumption': { type: 'boolean', default: false, help: 'let HTTP-CONNECT clients that offer it resume their TLS session (TLS 1.3 tickets): no certificates or signatures in such a handshake. A resumed session keeps the client identity of its full handshake for up to --tls-resumption-lifetime; see the README' },
  'tls-resumption-lifetime': { type: 'string', default: `${DEFAULT_TLS_RESUMPTION_LIFETIME_S}s`, metavar: 'DURATION', help: 'how long after its full handshake a TLS session may be resumed (with --tls-resumption)' },
  'drain-timeout': { type: 'string', default: '30s', metavar: 'DURATION', help: 'on SIGTERM, how long open connections may go on: new clients and agent streams are refused, agents get DRAIN, and whatever is still open then is closed (0 closes at once; keep it below the pod\'s terminationGracePeriodSeconds; a second signal exits at once)' },
  'request-head-timeout': { type: 'string', default: '10s', metavar: 'DURATION', help: 'how long an HTTP-CONNECT or reverse-proxy client has for its request head (the CONNECT line and headers) after connecting; later is 408' },
  'client-authorization': { type: 'string', metavar: 'FILE', help: 'JSON file of which clients may reach which cluster, by certificate CN, O, DNS or URI SAN, and "uds" for unix-socket clients (see the README); read at start (default: every client may reach every cluster)' },
  'max-connections-per-agent': { type: 'string', default: '0', metavar: 'N', help: 'most open and dialing connections through one agent; more are refused with 503 (0 = no limit)' },
  'max-dials-per-second-per-agent': { type: 'string', default: '0', metavar: 'N', help: 'most new dials through one agent per second (bursts of N); more are refused with 429 (0 = no limit)' },
  'max-connections-per-client': { type: 'string', default: '0', metavar: 'N', help: 'most open and dialing connections of one client (one certificate subject; unix-socket clients together count as one); more are refused with 503 (0 = no limit)' },
  'max-dials-per-second-per-client': { type: 'string', default: '0', metavar: 'N', help: 'most new dials of one client per second (bursts of N); more are refused with 429 (0 = no limit)' },
  'max-pending-dials': { type: 'string', default: '0', metavar: 'N', help: 'most dials waiting for agents\' answers, all agents together; more are refused with 503 (0 = no limit)' },
  'tcp-keepalive': { type: 'string', default: '30s', metavar: 'DURATION', help: 'TCP keepalive of HTTP-CONNECT client sockets: probes after this long without a packet, so that a dead client\'s tunnels close (0 turns it off)' },
  ...reverseProxyFlags(),
  ...certificateFlags('server'),
  kubeconfig: { type: 'string', metavar: 'FILE', help: 'kubeconfig of the hub cluster, for --cert-source=kube and token authentication (default: the pod\'s service account)' },
  'approve-csrs': { type: 'boolean', default: true, help: 'with --cert-source=kube, approve and sign the tunnel\'s certificate requests here, with the CA of --ca-secret (created on first start)' },
  'agent-signer': { type: 'string', metavar: 'NAME', help: 'the signer agents request their certificates from (default <signer-domain>/agent; kubernetes.io/kube-apiserver-client has kube-controller-manager sign them, and --cluster-ca-cert must then be the hub\'s client CA)' },
  'ca-secret': { type: 'string', default: 'tunnel-ca', metavar: 'NAME', help: 'the Secret in --namespace that holds the tunnel CA' },
  'ca-bundle-configmap': { type: 'string', default: 'tunnel-ca', metavar: 'NAME', help: 'the ConfigMap in --namespace where the CA bundle is published (key ca.crt) and followed' },
  'max-cert-lifetime': { type: 'string', default: '8760h', metavar: 'DURATION', help: 'the longest lifetime the signer issues, whatever a request asks (may be shorter than the 10 minutes requests ask at least)' },
  'server-service': { type: 'string', metavar: 'NS/NAME', help: 'the Service that exposes this server: its names and addresses join the certificate\'s SANs (default in a pod: <namespace>/tunnel-server)' },
  'server-requester': { type: 'string', metavar: 'USER', help: 'who may request the server\'s certificate (default: system:serviceaccount:<namespace>:tunnel-server)' },
  'agent-requester': { type: 'string', metavar: 'USER', help: 'who may request an agent\'s first certificate, {cluster} standing for its cluster (default: system:serviceaccount:<namespace>:tunnel-agent-{cluster})' },
  'agent-namespace': { type: 'string', metavar: 'NS', help: 'authenticate agents by service-account token (TokenReview at the hub): the account\'s namespace' },
  'agent-service-account': { type: 'string', metavar: 'NAME', help: 'the agents\' service account; {cluster} stands for the cluster the agent announces (e.g. tunnel-agent-{cluster})' },
  'authentication-audience': { type: 'string', metavar: 'AUDIENCE', help: 'the audience agents\' tokens must be issued for' },
  ...commonFlags(8092, 'carry both directions of an agent\'s traffic on its one connection, as the reference does (default: our agents get one connection per direction)'),
} as const;

runMain(NAME, async () => {
  const flags = parseFlags({ name: NAME, summary: 'The tunnel server: agents in managed clusters connect to it; hub clients reach those clusters through it with HTTP-CONNECT or gRPC.' }, FLAGS, process.argv.slice(2));
  applyLogFormat(flags['log-format']);
  applyLogLevel(flags['log-level'], flags.v);
  const log = logger('server');
  const metrics = new MetricsRegistry(SERVER_METRICS_PREFIX);
  const started: { server?: TunnelServer; leases?: ServerLeases } = {};
  // Before the first socket opens, the hub's API included.
  // Agents hold connections too: a hub whose agents went away (a region lost, a restart of
  // theirs) has as much memory to give back as one whose clients did.
  const policy = applyProcessPolicy(flags, () => (started.server?.establishedConnections ?? 0) + (started.server?.agentStreams ?? 0), log);
  let strategies;
  try {
    strategies = parseProxyStrategies(parseList(flags['proxy-strategies']));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const leaseSettings = flags['enable-lease-controller'] ? leaseFlags(flags) : undefined;
  const reverseProxy = reverseProxyConfig(flags);
  const dialLimits = {
    maxConnectionsPerAgent: parseCount('max-connections-per-agent', flags['max-connections-per-agent'], 0),
    maxDialsPerSecondPerAgent: parseCount('max-dials-per-second-per-agent', flags['max-dials-per-second-per-agent'], 0),
    maxConnectionsPerClient: parseCount('max-connections-per-client', flags['max-connections-per-client'], 0),
    maxDialsPerSecondPerClient: parseCount('max-dials-per-second-per-client', flags['max-dials-per-second-per-client'], 0),
    maxPendingDials: parseCount('max-pending-dials', flags['max-pending-dials'], 0),
  };
  const keepAliveMs = parseKeepAlive('tcp-keepalive', flags['tcp-keepalive']);
  const authorization = flags['client-authorization'] === undefined ? undefined
    : await loadClientAuthorization(flags['client-authorization']).catch((err: Error) => {
      throw new UsageError(`--client-authorization: ${err.message}`);
    });
  if (authorization) log.info('client authorization', { file: authorization.source, clusters: [...authorization.clusters.keys()].join(',') });
  const source = parseCertSource(flags['cert-source']);
  const tokenAuth = flags['agent-namespace'] !== undefined;
  const leasing = flags['enable-lease-controller'];
  const kube = source === 'kube' || tokenAuth || leasing
    ? hubConnection(flags.kubeconfig, source === 'kube' ? '--cert-source=kube' : tokenAuth ? 'token authentication (--agent-namespace)' : '--enable-lease-controller')
    : undefined;
  let certificates: KubeCertificates | undefined;
  if (source === 'kube') {
    if (flags['server-cert'] || flags['server-key']) throw new UsageError('--cert-source=kube requests the server\'s certificate from the hub: leave out --server-cert and --server-key');
    certificates = await kubeServerCertificates(flags, kube!, log, metrics);
  }
  const tls = certificates?.tls ?? await resolveTls(
    { ca: ['ca-cert', flags['ca-cert']], cert: ['server-cert', flags['server-cert']], key: ['server-key', flags['server-key']] },
    { role: 'server', purpose: 'tunnel-server listeners', stateDir: flags['state-dir'], dnsNames: parseList(flags['cert-dns-names']), ips: parseList(flags['cert-ips']) },
  );
  const authenticate = tokenAuth ? tokenReviewer({
    kube: kube!,
    namespace: flags['agent-namespace'],
    serviceAccount: required('agent-service-account', flags['agent-service-account'], 'with --agent-namespace'),
    audience: required('authentication-audience', flags['authentication-audience'], 'with --agent-namespace'),
  }) : undefined;
  let agentIdentity;
  try {
    agentIdentity = parseAgentIdentityRule(flags['agent-identity'], flags['agent-organization']);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const trusting = async (flag: 'cluster-ca-cert' | 'server-ca-cert', purpose: string) => {
    const path = flags[flag];
    return path ? withTrust(tls, await fileCaBundle(path, purpose)) : tls;
  };
  const server = new TunnelServer({
    bindAddress: flags['bind-address'],
    agentPort: parsePort('agent-port', flags['agent-port']),
    serverPort: parseOptionalPort('server-port', flags['server-port']),
    httpConnectUds: flags['http-connect-uds'],
    udsName: flags['uds-name'],
    grpcPort: parseOptionalPort('grpc-port', flags['grpc-port']),
    healthBindAddress: flags['health-bind-address'],
    healthPort: parseOptionalPort('health-port', flags['health-port']),
    readyMinAgents: parseCount('ready-min-agents', flags['ready-min-agents'], 0),
    tls: await trusting('server-ca-cert', 'tunnel-server frontends (--server-ca-cert)'),
    agentTls: await trusting('cluster-ca-cert', 'tunnel-server agent port (--cluster-ca-cert)'),
    agentIdentity,
    authenticateAgents: authenticate,
    clientPolicy: allPolicies(refuseAgentCertificates(flags['agent-organization']), authorization && authorizeClients(authorization)),
    metrics,
    proxyStrategies: strategies,
    serverID: flags['server-id'],
    serverCount: parseCount('server-count', flags['server-count'], 1),
    countedServers: () => started.leases?.count$.value,
    dialTimeoutMs: parseDuration('dial-timeout', flags['dial-timeout']),
    connectionWindow: parseCount('connection-window', flags['connection-window'], 0),
    singleStream: flags['single-stream'],
    reverseProxy,
    tlsResumption: flags['tls-resumption'] ? { lifetimeSeconds: Math.ceil(positiveDuration('tls-resumption-lifetime', flags['tls-resumption-lifetime']) / 1000) } : undefined,
    dialLimits,
    keepAliveMs,
    clientLimits: {
      handshakeMs: positiveDuration('handshake-timeout', flags['handshake-timeout']),
      requestHeadMs: positiveDuration('request-head-timeout', flags['request-head-timeout']),
    },
  });
  started.server = server;
  const drainTimeout = parseDuration('drain-timeout', flags['drain-timeout']);
  onShutdownSignal(async () => {
    // The Lease goes first: the other servers count one less while this one drains.
    await started.leases?.stop();
    await server.shutdown(drainTimeout);
    policy.stop();
    certificates?.close();
  });
  await server.start();
  if (leaseSettings) {
    started.leases = new ServerLeases({
      kube: kube!,
      namespace: flags['lease-namespace'] ?? namespaceOf(flags.namespace, kube!),
      serverID: server.serverID,
      ...leaseSettings,
      log,
    });
    started.leases.start();
  }
});

function leaseFlags(flags: FlagValues<typeof FLAGS>): { labels: Record<string, string>; durationMs: number; renewIntervalMs: number } {
  let labels;
  try {
    labels = parseLeaseLabels(flags['lease-label']);
  } catch (err) {
    throw new UsageError(`--lease-label=${flags['lease-label']}: ${(err as Error).message}`);
  }
  const durationMs = positiveDuration('lease-duration', flags['lease-duration']);
  const renewIntervalMs = positiveDuration('lease-renew-interval', flags['lease-renew-interval']);
  if (durationMs < 1000) throw new UsageError(`--lease-duration=${flags['lease-duration']} must be at least 1s (a Lease counts whole seconds)`);
  if (renewIntervalMs >= durationMs) throw new UsageError(`--lease-renew-interval=${flags['lease-renew-interval']} must be shorter than --lease-duration=${flags['lease-duration']}, or the Lease expires between renewals`);
  if (renewIntervalMs > 2 ** 31 - 1) throw new UsageError(`--lease-renew-interval=${flags['lease-renew-interval']} is longer than a timer can wait (about 24 days)`);
  return { labels, durationMs, renewIntervalMs };
}

function positiveDuration(flag: string, value: string): number {
  const ms = parseDuration(flag, value);
  if (ms <= 0) throw new UsageError(`--${flag}=${value} must be longer than 0`);
  return ms;
}

function required(flag: string, value: string | undefined, when: string): string {
  if (!value) throw new UsageError(`--${flag} is needed ${when}`);
  return value;
}

/** The server's certificate from the CSR API, and the approver and signer, from the flags. */
async function kubeServerCertificates(flags: FlagValues<typeof FLAGS>, kube: KubeConnection, log: Logger, metrics: MetricsRegistry): Promise<KubeCertificates> {
  const namespace = namespaceOf(flags.namespace, kube);
  const signers = signerNames(flags['signer-domain']);
  const serviceFlag = flags['server-service'] ?? (runningInCluster() ? `${namespace}/tunnel-server` : undefined);
  const [serviceNamespace, serviceName, ...extra] = serviceFlag?.split('/') ?? [];
  if (serviceFlag && (!serviceName || extra.length > 0)) throw new UsageError(`--server-service=${serviceFlag} is not NAMESPACE/NAME`);
  return serverCertificates({
    kube,
    namespace,
    signers: { server: signers.server, agent: flags['agent-signer'] ?? signers.agent },
    caSecret: flags['ca-secret'],
    caBundleConfigMap: flags['ca-bundle-configmap'],
    approve: flags['approve-csrs'],
    serverRequesters: [flags['server-requester'] ?? `system:serviceaccount:${namespace}:tunnel-server`],
    agentRequester: flags['agent-requester'] ?? `system:serviceaccount:${namespace}:tunnel-agent-{cluster}`,
    // The signer may issue shorter than the 10 minutes a request asks at least (short-lived certificates).
    maxLifetimeSeconds: parseLifetime('max-cert-lifetime', flags['max-cert-lifetime'], 1),
    lifetimeSeconds: parseLifetime('cert-lifetime', flags['cert-lifetime']),
    names: {
      static: { dnsNames: ['localhost', ...parseList(flags['cert-dns-names'])], ips: ['127.0.0.1', '::1', ...parseList(flags['cert-ips'])] },
      service: serviceFlag ? { namespace: serviceNamespace, name: serviceName } : undefined,
    },
    certDir: certDirOf(flags['cert-dir'], flags['state-dir']),
    waitTimeoutMs: parseDuration('csr-timeout', flags['csr-timeout']),
    metrics,
    log,
  });
}
