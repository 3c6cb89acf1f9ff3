#!/usr/bin/env node
/** tunnel-agent: flags in, a running TunnelAgent out. */
import { onShutdownSignal, parseCount, parseFlags, parseDuration, parseOptionalPort, runMain } from '../lib/cli/flags.js';
import { UsageError } from '../lib/common/errors.js';
import { applyLogLevel, commonFlags } from '../lib/cli/common-flags.js';
import { resolveTls } from '../lib/pki/resolve-tls.js';
import { TunnelAgent } from '../lib/agent/tunnel-agent.js';
import { parseHostAliases } from '../lib/agent/target-dialer.js';
import { validateAgentIdentifiers } from '../lib/wire/agent-identifiers.js';
import { DEFAULT_AGENT_PORT } from '../lib/wire/protocol.js';
import { applyProcessPolicy } from '../lib/cli/process-defaults.js';
import { logger } from '../lib/observe/log.js';

const NAME = 'tunnel-agent';

const FLAGS = {
  'cluster-name': { type: 'string', metavar: 'NAME', help: 'serve dials to NAME:port (announces host=NAME)' },
  'agent-identifiers': { type: 'string', metavar: 'QUERY', help: 'what this agent serves, as a URL query: host=, ipv4=, ipv6=, cidr=, default-route=true (overrides --cluster-name\'s host=NAME)' },
  'agent-id': { type: 'string', metavar: 'ID', help: 'this agent\'s id (default: $PROXY_AGENT_ID, else a random UUID)' },
  'tunnelserver-addr': { type: 'string', default: `127.0.0.1:${DEFAULT_AGENT_PORT}`, metavar: 'HOST:PORT', help: 'the tunnel server\'s agent port' },
  'server-name': { type: 'string', metavar: 'NAME', help: 'name to verify the server certificate against (default: the host of --tunnelserver-addr)' },
  'ca-cert': { type: 'string', metavar: 'PATH', help: 'CA that the server certificate must chain to' },
  'agent-cert': { type: 'string', metavar: 'PATH', help: 'this agent\'s client certificate (PEM)' },
  'agent-key': { type: 'string', metavar: 'PATH', help: 'this agent\'s private key (PEM)' },
  'dial-timeout': { type: 'string', default: '5s', metavar: 'DURATION', help: 'timeout for dialing a target' },
  'host-alias': { type: 'string', multiple: true, metavar: 'NAME=ADDRESS', help: 'dial ADDRESS when asked for NAME, before DNS (e.g. my-cluster=127.0.0.1)' },
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
  applyLogLevel(flags['log-level']);
  const identifiers = identifiersFrom(flags['cluster-name'], flags['agent-identifiers']);
  let hostAliases;
  try {
    hostAliases = parseHostAliases(flags['host-alias']);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const tls = await resolveTls(
    { ca: ['ca-cert', flags['ca-cert']], cert: ['agent-cert', flags['agent-cert']], key: ['agent-key', flags['agent-key']] },
    { role: 'agent', purpose: 'tunnel-agent connection to the server', stateDir: flags['state-dir'], agentCluster: flags['cluster-name'] ?? new URLSearchParams(identifiers).get('host') ?? undefined },
  );
  const agent = new TunnelAgent({
    serverAddress: flags['tunnelserver-addr'],
    tls,
    serverName: flags['server-name'],
    agentID: flags['agent-id'] ?? process.env.PROXY_AGENT_ID,
    agentIdentifiers: identifiers,
    target: { timeoutMs: parseDuration('dial-timeout', flags['dial-timeout']), hostAliases },
    connectionWindow: parseCount('connection-window', flags['connection-window'], 0),
    healthBindAddress: flags['health-bind-address'],
    healthPort: parseOptionalPort('health-port', flags['health-port']),
    singleStream: flags['single-stream'],
  });
  // Before the first socket opens.
  const policy = applyProcessPolicy(flags, () => agent.openEndpointConnections, logger('agent'));
  onShutdownSignal(async () => {
    policy.stop();
    await agent.stop();
  });
  await agent.start();
});
