#!/usr/bin/env node
/** tunnel-server: flags in, a running TunnelServer out. */
import { onShutdownSignal, parseCount, parseFlags, parseDuration, parseList, parseOptionalPort, parsePort, runMain } from '../lib/cli/flags.js';
import { UsageError } from '../lib/common/errors.js';
import { applyLogLevel, commonFlags } from '../lib/cli/common-flags.js';
import { resolveTls } from '../lib/pki/resolve-tls.js';
import { parseProxyStrategies } from '../lib/server/proxy-strategies.js';
import { TunnelServer } from '../lib/server/tunnel-server.js';
import { DEFAULT_AGENT_IDENTITY, parseAgentIdentityRule } from '../lib/server/agent-identity.js';
import { refuseAgentCertificates } from '../lib/server/client-policy.js';
import { AGENT_ORGANIZATION } from '../lib/pki/identities.js';
import { fileCaBundle, withTrust } from '../lib/pki/tls-source.js';
import { DEFAULT_AGENT_PORT, DEFAULT_SERVER_PORT } from '../lib/wire/protocol.js';
import { applyProcessPolicy } from '../lib/cli/process-defaults.js';
import { logger } from '../lib/observe/log.js';

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
  'server-count': { type: 'string', default: '1', metavar: 'N', help: 'number of servers behind the agents\' address; agents keep a stream to each' },
  'dial-timeout': { type: 'string', default: '30s', metavar: 'DURATION', help: 'how long a client waits for the agent to answer a dial' },
  ...commonFlags(8092, 'carry both directions of an agent\'s traffic on its one connection, as the reference does (default: our agents get one connection per direction)'),
} as const;

runMain(NAME, async () => {
  const flags = parseFlags({ name: NAME, summary: 'The tunnel server: agents in managed clusters connect to it; hub clients reach those clusters through it with HTTP-CONNECT or gRPC.' }, FLAGS, process.argv.slice(2));
  applyLogLevel(flags['log-level']);
  let strategies;
  try {
    strategies = parseProxyStrategies(parseList(flags['proxy-strategies']));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const tls = await resolveTls(
    { ca: ['ca-cert', flags['ca-cert']], cert: ['server-cert', flags['server-cert']], key: ['server-key', flags['server-key']] },
    { role: 'server', purpose: 'tunnel-server listeners', stateDir: flags['state-dir'], dnsNames: parseList(flags['cert-dns-names']), ips: parseList(flags['cert-ips']) },
  );
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
    tls: await trusting('server-ca-cert', 'tunnel-server frontends (--server-ca-cert)'),
    agentTls: await trusting('cluster-ca-cert', 'tunnel-server agent port (--cluster-ca-cert)'),
    agentIdentity,
    clientPolicy: refuseAgentCertificates(flags['agent-organization']),
    proxyStrategies: strategies,
    serverID: flags['server-id'],
    serverCount: parseCount('server-count', flags['server-count'], 1),
    dialTimeoutMs: parseDuration('dial-timeout', flags['dial-timeout']),
    connectionWindow: parseCount('connection-window', flags['connection-window'], 0),
    singleStream: flags['single-stream'],
  });
  // Before the first socket opens.
  const policy = applyProcessPolicy(flags, () => server.establishedConnections, logger('server'));
  onShutdownSignal(async () => {
    policy.stop();
    await server.stop();
  });
  await server.start();
});
