#!/usr/bin/env node
/** tunnel-agent: flags in, a running TunnelAgent out. */
import { onShutdownSignal, parseCount, parseFlags, parseDuration, parseKeepAlive, parseOptionalPort, parsePort, runMain, type FlagValues } from '../lib/cli/flags.js';
import { UsageError } from '../lib/common/errors.js';
import { applyLogFormat, applyLogLevel, commonFlags } from '../lib/cli/common-flags.js';
import { resolveTls } from '../lib/pki/resolve-tls.js';
import { TunnelAgent } from '../lib/agent/tunnel-agent.js';
import { parseHostAliases } from '../lib/agent/target-dialer.js';
import { DialAllowList } from '../lib/agent/dial-allow-list.js';
import { IdleWatch } from '../lib/agent/idle-watch.js';
import { parsePushListen } from '../lib/agent/push-listener.js';
import { discoverServer, parseServiceRef } from '../lib/agent/server-discovery.js';
import { isIPv6 } from 'node:net';
import { joinHostPort, splitHostPort } from '../lib/transport/host-port.js';
import { loadHookProvider, loadManagedKubeConfig, parseHookOptions, runPostStartHooks, runPreStartHooks, type HookContext } from '../lib/agent/hooks/index.js';
import { validateAgentIdentifiers } from '../lib/wire/agent-identifiers.js';
import { DEFAULT_AGENT_PORT } from '../lib/wire/protocol.js';
import { applyProcessPolicy } from '../lib/cli/process-defaults.js';
import { logger, processLine, type Logger } from '../lib/observe/log.js';
import { MetricsRegistry } from '../lib/observe/metrics.js';
import { AGENT_METRICS_PREFIX } from '../lib/agent/tunnel-agent.js';
import { certificateFlags, certDirOf, namespaceOf, parseCertSource, parseLifetime } from '../lib/cli/kube-flags.js';
import { agentCertificates, signerNames, type KubeCertificates } from '../lib/cli/kube-certificates.js';
import { loadKube, type KubeConnection } from '../lib/kube/kube-config.js';
import { deferredTlsSource } from '../lib/pki/tls-source.js';
import { DEFAULT_LEASE_LABEL, countServerLeases } from '../lib/kube/leases.js';

const NAME = 'tunnel-agent';

const FLAGS = {
  'cluster-name': { type: 'string', metavar: 'NAME', help: 'serve dials to NAME:port (announces host=NAME)' },
  'agent-identifiers': { type: 'string', metavar: 'QUERY', help: 'what this agent serves, as a URL query: host=, ipv4=, ipv6=, cidr=, default-route=true (overrides --cluster-name\'s host=NAME)' },
  'agent-id': { type: 'string', metavar: 'ID', help: 'this agent\'s id (default: $PROXY_AGENT_ID, else a random UUID)' },
  'tunnelserver-addr': { type: 'string', default: `127.0.0.1:${DEFAULT_AGENT_PORT}`, metavar: 'HOST:PORT', help: 'the tunnel server\'s agent port' },
  'proxy-server-host': { type: 'string', multiple: true, metavar: 'HOST[:PORT],...', help: 'the tunnel server\'s host, as the reference agent names it (with --proxy-server-port; instead of --tunnelserver-addr); several, comma-separated or repeated, hold a stream through each (servers without a balancer), each with its own back-off' },
  'proxy-server-port': { type: 'string', metavar: 'PORT', help: `the tunnel server's agent port, as the reference agent names it (default ${DEFAULT_AGENT_PORT} with --proxy-server-host)` },
  'server-service': { type: 'string', metavar: 'NS/NAME', help: 'find the tunnel server from this hub Service and follow it (its tunnel.tkestack.io/public-address annotation, LoadBalancer ingress or NodePort), through the hub API of --hub-kubeconfig or --apiserver-addr' },
  'server-name': { type: 'string', metavar: 'NAME', help: 'name to verify the server certificate against (default: the host of --tunnelserver-addr)' },
  'ca-cert': { type: 'string', metavar: 'PATH', help: 'CA that the server certificate must chain to' },
  'agent-cert': { type: 'string', metavar: 'PATH', help: 'this agent\'s client certificate (PEM)' },
  'agent-key': { type: 'string', metavar: 'PATH', help: 'this agent\'s private key (PEM)' },
  'dial-timeout': { type: 'string', default: '5s', metavar: 'DURATION', help: 'timeout for dialing a target' },
  'drain-timeout': { type: 'string', default: '30s', metavar: 'DURATION', help: 'on SIGTERM, how long open connections may go on: the servers get DRAIN and new dials are refused, and whatever is still open then is closed (0 closes at once; a second signal exits at once)' },
  'count-server-leases': { type: 'boolean', default: false, help: 'take the server count from the servers\' Leases at the hub (their --enable-lease-controller), through --hub-kubeconfig or --apiserver-addr, instead of their servercount headers' },
  'lease-namespace': { type: 'string', metavar: 'NS', help: 'namespace of the servers\' Leases (default: --namespace\'s, or the kubeconfig context\'s)' },
  'lease-label-selector': { type: 'string', default: DEFAULT_LEASE_LABEL, metavar: 'SELECTOR', help: 'label selector of the servers\' Leases' },
  'lease-count-interval': { type: 'string', default: '10s', metavar: 'DURATION', help: 'how often the agent counts the servers\' Leases' },
  'push-listen': { type: 'string', multiple: true, metavar: 'ADDRESS:PORT=ROUTE', help: 'push mode: listen on ADDRESS:PORT in this cluster and carry each connection through the tunnel to the server\'s route ROUTE (apiserver, norm, healthz, or one of its routes file), e.g. 127.0.0.1:8080=apiserver' },
  'host-alias': { type: 'string', multiple: true, metavar: 'NAME=ADDRESS', help: 'dial ADDRESS when asked for NAME, before DNS (e.g. my-cluster=127.0.0.1)' },
  'allow-dial': { type: 'string', multiple: true, metavar: 'HOST:PORT', help: 'dial only these targets: HOST is a name, *.domain, *, an IP or a CIDR (checked against the resolved address), PORT a number, a range or *; e.g. 10.0.0.0/8:443, *.svc.cluster.local:*, kubernetes.default:443 (default: every target, as before; refused dials get a DIAL_RSP error, HTTP-CONNECT clients a 502)' },
  'tcp-keepalive': { type: 'string', default: '30s', metavar: 'DURATION', help: 'TCP keepalive of target sockets: probes after this long without a packet, so that a vanished target\'s tunnels close (0 turns it off)' },
  'idle-timeout': { type: 'string', default: '0', metavar: 'DURATION', help: 'close a tunneled connection that moved no byte either way for this long, on both sides (0 = never)' },
  ...certificateFlags('agent'),
  'hub-kubeconfig': { type: 'string', metavar: 'FILE', help: 'kubeconfig for the hub\'s API server with the bootstrap credential, for --cert-source=kube (or --apiserver-addr, --hub-ca-cert and --bootstrap-token-file)' },
  'apiserver-addr': { type: 'string', metavar: 'HOST:PORT', help: 'the hub\'s API server as this agent reaches it, for --cert-source=kube' },
  'hub-ca-cert': { type: 'string', metavar: 'PATH', help: 'the CA that signs the hub API server\'s certificate (with --apiserver-addr)' },
  'bootstrap-token-file': { type: 'string', metavar: 'PATH', help: 'the hub service-account token of this cluster\'s agent (with --apiserver-addr), re-read as it rotates' },
  signer: { type: 'string', metavar: 'NAME', help: 'the signer to request the certificate from (default: <signer-domain>/agent)' },
  'ca-bundle-configmap': { type: 'string', default: 'tunnel-ca', metavar: 'NAME', help: 'with --cert-source=kube and no --ca-cert: the hub ConfigMap (in --namespace) whose ca.crt verifies the server, followed as it changes' },
  'hook-provider': { type: 'string', default: 'none', metavar: 'none|tkestack|PATH', help: 'start hooks: none, tkestack (after start, report this cluster\'s credential to the hub\'s ClusterCredential), or the path of a module exporting hooks (see the README)' },
  'hook-option': { type: 'string', multiple: true, metavar: 'KEY=VALUE', help: 'an option for the hooks, e.g. tenant-id=default for tkestack' },
  'managed-kubeconfig': { type: 'string', metavar: 'FILE', help: 'this (managed) cluster\'s API server for the hooks (default: the pod\'s service account)' },
  'service-account-token-path': { type: 'string', metavar: 'PATH', help: 'send this token to the server as a bearer token at every connect (when it authenticates agents by token)' },
  ...commonFlags(8093, 'carry both directions on one connection, as the reference agent does (default: a second connection for server -> agent traffic when the server agrees)'),
} as const;

function identifiersFrom(clusterName: string | undefined, explicit: string | undefined): string {
  if (explicit !== undefined) {
    try {
      validateAgentIdentifiers(explicit);
    } catch (err) {
      throw new UsageError(`--agent-identifiers: ${(err as Error).message}`);
    }
    return explicit;
  }
  if (clusterName) return new URLSearchParams({ host: clusterName }).toString();
  throw new UsageError('give --cluster-name=NAME (dials to NAME:port come to this agent), or --agent-identifiers');
}

runMain(NAME, async () => {
  const flags = parseFlags({ name: NAME, summary: 'The tunnel agent: runs in a managed cluster, dials out to the tunnel server and opens the connections the hub asks for.' }, FLAGS, process.argv.slice(2));
  applyLogFormat(flags['log-format']);
  applyLogLevel(flags['log-level'], flags.v);
  const log = logger('agent');
  const started: { agent?: TunnelAgent } = {};
  // Before the first socket opens, the hub's API included.
  const policy = applyProcessPolicy(flags, () => started.agent?.openEndpointConnections ?? 0, log);
  const identifiers = identifiersFrom(flags['cluster-name'], flags['agent-identifiers']);
  const cluster = flags['cluster-name'] ?? new URLSearchParams(identifiers).get('host') ?? undefined;
  let hostAliases;
  try {
    hostAliases = parseHostAliases(flags['host-alias']);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  let allowList;
  try {
    allowList = new DialAllowList(flags['allow-dial']);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  log.info('dial allow-list', { allow: allowList.allowsEverything ? 'every target (no --allow-dial)' : allowList.describe() });
  const keepAliveMs = parseKeepAlive('tcp-keepalive', flags['tcp-keepalive']);
  const metrics = new MetricsRegistry(AGENT_METRICS_PREFIX);
  const idleMs = parseDuration('idle-timeout', flags['idle-timeout']);
  const idleClosed = metrics.counter('idle_connections_closed_total', 'Tunneled connections closed by --idle-timeout.');
  const idle = idleMs > 0 ? new IdleWatch(idleMs, log, () => idleClosed.inc()) : undefined;
  const serverAddresses = serverAddressesOf(flags);
  const serverAddress = serverAddresses.join(',');
  const serverService = flags['server-service'] === undefined ? undefined : serviceRef(flags['server-service']);
  // A certificate from the CSR API may wait for approval: the agent starts meanwhile (its
  // health and metrics answer), and connects once it has one.
  const kubeCerts = parseCertSource(flags['cert-source']) === 'kube';
  const countLeases = flags['count-server-leases'];
  const leaseInterval = countLeases ? parseDuration('lease-count-interval', flags['lease-count-interval']) : 0;
  if (countLeases && (leaseInterval <= 0 || leaseInterval > 2 ** 31 - 1)) throw new UsageError(`--lease-count-interval=${flags['lease-count-interval']} must be longer than 0 and at most about 24 days`);
  const hub = kubeCerts || serverService || countLeases ? hubKube(flags, kubeCerts ? '--cert-source=kube' : serverService ? '--server-service' : '--count-server-leases')
    : flags['hub-kubeconfig'] || flags['apiserver-addr'] ? hubKube(flags, 'the hooks') : undefined;
  const hookOptions = parseHookOptions(flags['hook-option']);
  const hooks = await loadHookProvider(flags['hook-provider'], hookOptions);
  const stopping = new AbortController();
  const certificates = kubeCerts ? kubeAgentCertificates(flags, hub!, cluster, log, metrics) : undefined;
  certificates?.catch((err: Error) => {
    process.stderr.write(processLine(NAME, 'error', err.message, `${NAME}: ${err.message}`));
    process.exit(err instanceof UsageError ? 2 : 1);
  });
  const tls = certificates ? deferredTlsSource(certificates.then((c) => c.tls)) : await resolveTls(
    { ca: ['ca-cert', flags['ca-cert']], cert: ['agent-cert', flags['agent-cert']], key: ['agent-key', flags['agent-key']] },
    { role: 'agent', purpose: 'tunnel-agent connection to the server', stateDir: flags['state-dir'], agentCluster: cluster },
  );
  const agent = new TunnelAgent({
    serverAddress,
    serverAddressList: serverAddresses,
    serverCount$: countLeases ? countServerLeases({
      kube: hub!, namespace: flags['lease-namespace'] ?? namespaceOf(flags.namespace, hub!), selector: flags['lease-label-selector'], intervalMs: leaseInterval, log,
    }) : undefined,
    serverAddresses: serverService ? discoverServer({ kube: hub!, service: serverService, log }) : undefined,
    tls,
    serverName: flags['server-name'],
    agentID: flags['agent-id'] ?? process.env.PROXY_AGENT_ID,
    agentIdentifiers: identifiers,
    target: {
      timeoutMs: parseDuration('dial-timeout', flags['dial-timeout']),
      hostAliases,
      allow: allowList.allowsEverything ? undefined : allowList,
      keepAliveMs,
      onConnected: idle ? (socket, address) => idle.watch(socket, address) : undefined,
    },
    connectionWindow: parseCount('connection-window', flags['connection-window'], 0),
    healthBindAddress: flags['health-bind-address'],
    healthPort: parseOptionalPort('health-port', flags['health-port']),
    singleStream: flags['single-stream'],
    tokenFile: flags['service-account-token-path'],
    metrics,
    pushListen: parsePushListen(flags['push-listen']),
    beforeConnect: hooks.length === 0 ? undefined : async () => {
      const pre = await runPreStartHooks(hooks, hookContext!).catch((err: Error) => {
        fatal(err);
        throw err;
      });
      if (pre.cancelled) throw new Error('the agent is stopping');
    },
  });
  started.agent = agent;
  // An agent without hooks needs no managed cluster's API.
  const hookContext: HookContext | undefined = hooks.length === 0 ? undefined : {
    config: { clusterName: cluster, agentID: agent.agentID, serverAddress, options: hookOptions },
    hub: hub?.config,
    managed: loadManagedKubeConfig(flags['managed-kubeconfig']),
    log: log.child('hooks'),
    signal: stopping.signal,
  };
  if (hookContext) {
    void agent.connected.then(() => runPostStartHooks(hooks, hookContext)).catch((err: Error) => fatal(err));
  }
  const fatal = (err: Error) => {
    log.error('stopping: a start hook failed', { reason: err.message });
    stopping.abort();
    void agent.stop().finally(() => process.exit(1));
  };
  const drainTimeout = parseDuration('drain-timeout', flags['drain-timeout']);
  onShutdownSignal(async () => {
    stopping.abort();
    await agent.shutdown(drainTimeout);
    policy.stop();
    idle?.close();
    tls.close();
  });
  await agent.start();
});

/** The agent's certificate from the hub's CSR API, from the flags. */
async function kubeAgentCertificates(flags: FlagValues<typeof FLAGS>, kube: KubeConnection, cluster: string | undefined, log: Logger, metrics: MetricsRegistry): Promise<KubeCertificates> {
  if (!cluster) throw new UsageError('--cert-source=kube requests a certificate for the agent\'s cluster: give --cluster-name');
  if (flags['agent-cert'] || flags['agent-key']) throw new UsageError('--cert-source=kube requests the agent\'s certificate from the hub: leave out --agent-cert and --agent-key');
  const namespace = namespaceOf(flags.namespace, kube);
  return agentCertificates({
    kube,
    cluster,
    signer: flags.signer ?? signerNames(flags['signer-domain']).agent,
    trust: flags['ca-cert'] ? { file: flags['ca-cert'] } : { namespace, configMap: flags['ca-bundle-configmap'] },
    lifetimeSeconds: parseLifetime('cert-lifetime', flags['cert-lifetime']),
    certDir: certDirOf(flags['cert-dir'], flags['state-dir']),
    waitTimeoutMs: parseDuration('csr-timeout', flags['csr-timeout']),
    metrics,
    log,
  });
}

/** The hub's API server with the agent's bootstrap credential: --hub-kubeconfig, or --apiserver-addr with its CA and token. */
function hubKube(flags: FlagValues<typeof FLAGS>, what: string): KubeConnection {
  if (flags['hub-kubeconfig']) return loadKube({ kubeconfig: flags['hub-kubeconfig'] });
  if (flags['apiserver-addr']) {
    const missing = (['hub-ca-cert', 'bootstrap-token-file'] as const).filter((f) => !flags[f]);
    if (missing.length > 0) throw new UsageError(`--apiserver-addr needs ${missing.map((f) => `--${f}`).join(' and ')} too`);
    return loadKube({ server: `https://${flags['apiserver-addr']}`, caFile: flags['hub-ca-cert']!, tokenFile: flags['bootstrap-token-file']! });
  }
  throw new UsageError(`${what} needs the hub's API server: give --hub-kubeconfig, or --apiserver-addr with --hub-ca-cert and --bootstrap-token-file`);
}

/**
 * --tunnelserver-addr, or the reference agent's --proxy-server-host and --proxy-server-port;
 * --proxy-server-host may name several hosts (comma-separated, or the flag repeated), each
 * with its own :PORT or --proxy-server-port's.
 */
function serverAddressesOf(flags: FlagValues<typeof FLAGS>): string[] {
  const hosts = flags['proxy-server-host'].flatMap((value) => value.split(',')).map((h) => h.trim());
  if (flags['proxy-server-host'].length === 0) {
    if (flags['proxy-server-port'] !== undefined) throw new UsageError('--proxy-server-port needs --proxy-server-host');
    return [flags['tunnelserver-addr']];
  }
  if (process.argv.some((a) => a.startsWith('--tunnelserver-addr'))) throw new UsageError('give --tunnelserver-addr or --proxy-server-host, not both');
  const port = parsePort('proxy-server-port', flags['proxy-server-port'] ?? String(DEFAULT_AGENT_PORT));
  const addresses = hosts.map((host) => {
    if (host === '') throw new UsageError(`--proxy-server-host=${flags['proxy-server-host'].join(',')} has an empty host: give HOST or HOST:PORT, comma-separated`);
    const withPort = splitHostPort(host);
    if (withPort) return joinHostPort(withPort.host, withPort.port);
    if (host.includes(':') && !isIPv6(host)) throw new UsageError(`--proxy-server-host: ${host} is neither HOST nor HOST:PORT (a port is 1 to 65535)`);
    return joinHostPort(host, port);
  });
  return [...new Set(addresses)];
}

function serviceRef(value: string): { namespace: string; name: string } {
  try {
    return parseServiceRef(value, 'server-service');
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}
