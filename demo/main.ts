#!/usr/bin/env node
/** The demo (`npm start`): the whole tunnel on loopback, no Kubernetes needed. */
import { onShutdownSignal, parseFlags, parsePort, runMain } from '../lib/cli/flags.js';
import { defaultStateDir } from '../lib/pki/local-pki.js';
import { runDemo } from './demo.js';
import { applyProcessDefaults } from '../lib/cli/process-defaults.js';
import { DEFAULT_AGENT_PORT, DEFAULT_SERVER_PORT } from '../lib/wire/protocol.js';

const NAME = 'tunnel-demo';

const FLAGS = {
  'state-dir': { type: 'string', default: defaultStateDir(), metavar: 'DIR', help: 'where the local PKI is created (and reused)' },
  'cluster-name': { type: 'string', default: 'demo', metavar: 'NAME', help: 'the demo agent\'s cluster name' },
  'agent-port': { type: 'string', default: String(DEFAULT_AGENT_PORT), metavar: 'PORT', help: 'the server\'s agent port on 127.0.0.1 (0 = any free port)' },
  'server-port': { type: 'string', default: String(DEFAULT_SERVER_PORT), metavar: 'PORT', help: 'the HTTP-CONNECT port on 127.0.0.1 (0 = any free port)' },
  'target-port': { type: 'string', default: '8000', metavar: 'PORT', help: 'the sample target\'s port on 127.0.0.1 (0 = any free port)' },
  kube: { type: 'boolean', help: 'take the server\'s and the agent\'s certificates from a hub\'s CSR API (an in-process Kubernetes API server), renewed every minute' },
} as const;

runMain(NAME, async () => {
  applyProcessDefaults();
  const flags = parseFlags({ name: NAME, summary: 'Runs a tunnel server, an agent, a sample target and one request through the tunnel, on loopback.' }, FLAGS, process.argv.slice(2));
  const demo = await runDemo({
    stateDir: flags['state-dir'],
    kube: flags.kube,
    clusterName: flags['cluster-name'],
    agentPort: parsePort('agent-port', flags['agent-port']),
    serverPort: parsePort('server-port', flags['server-port']),
    targetPort: parsePort('target-port', flags['target-port']),
    out: (line) => process.stdout.write(`${line}\n`),
  });
  onShutdownSignal(() => demo.stop());
});
