/**
 * Roles and identity, through the real binaries: an agent may serve only the cluster its
 * certificate names, an agent's certificate may not dial through the frontends, and the
 * agent port and the frontends can trust different CAs.
 */
import test from 'ava';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  workspace, startServer, startAgent, httpTarget, run, eventually, metric, httpGet, type Workspace, type ServerHandle,
} from './helpers/system.js';
import { dialHttpConnect, ProxyError } from '../lib/client/http-connect-dialer.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';
import { localAgentCertificate } from '../lib/pki/local-pki.js';
import { createCa, issueCertificate } from '../lib/pki/certificates.js';

const SERVER_METRIC = 'konnectivity_network_proxy_server';

async function clientTls(ws: Workspace, cert = ws.pki.clientCert, key = ws.pki.clientKey) {
  return FileTlsSource.load({ ca: ws.pki.caCert, cert, key, role: 'test client' });
}

/** Starts an agent with the given certificate files (no local PKI) and waits for the server's verdict in its log. */
function agentWith(ws: Workspace, server: ServerHandle, cert: string, key: string, args: string[]) {
  return run('tunnel-agent', [
    `--tunnelserver-addr=127.0.0.1:${server.agentPort}`, '--health-port=off', '--host-alias=c1=127.0.0.1', '--host-alias=c2=127.0.0.1',
    `--ca-cert=${ws.pki.caCert}`, `--agent-cert=${cert}`, `--agent-key=${key}`, ...args,
  ]);
}

test.serial('an agent may serve only the cluster its certificate names', async (t) => {
  const ws = await workspace();
  const server = await startServer(ws);
  const c1 = await localAgentCertificate(ws.dir, 'c1');
  const cases = [
    { args: ['--cluster-name=c2'], refusal: /lets it serve cluster \\?"c1\\?" only, but it announced host=c2/ },
    { args: ['--agent-identifiers=host=c1&default-route=true'], refusal: /but it announced default-route=true/ },
    { args: ['--agent-identifiers=host=c1&ipv4=10.0.0.1'], refusal: /but it announced ipv4=10\.0\.0\.1/ },
  ];
  try {
    for (const { args, refusal } of cases) {
      const agent = agentWith(ws, server, c1.cert, c1.key, args);
      try {
        await agent.waitFor(/cannot connect to the tunnel server; retrying .*PERMISSION_DENIED/);
        t.regex(agent.output, refusal, 'the agent is told why');
        await server.proc.waitFor(new RegExp(`refusing agent stream .*certificate="CN=tunnel:agent:c1, O=tunnel:agents".*${refusal.source}`));
        t.is(await metric(server.healthPort, `${SERVER_METRIC}_ready_backends`), 0, 'nothing was registered');
      } finally {
        await agent.stop();
      }
    }
    // A certificate that names no cluster at all: a client's.
    const impostor = agentWith(ws, server, ws.pki.clientCert, ws.pki.clientKey, ['--cluster-name=c1']);
    try {
      await impostor.waitFor(/is not an agent certificate: it lacks O tunnel:agents/);
    } finally {
      await impostor.stop();
    }
    // The right certificate for its cluster is accepted.
    const agent = await startAgent(ws, server, 'c1');
    await eventually(async () => await metric(server.healthPort, `${SERVER_METRIC}_ready_backends`) === 1, 5_000, 'the agent of c1 registered');
    await agent.stop();
  } finally {
    await server.stop();
    ws.cleanup();
  }
});

test.serial('with --agent-identity=off any certificate of the CA may announce anything, as with the reference server', async (t) => {
  const ws = await workspace();
  const server = await startServer(ws, ['--agent-identity=off']);
  const c1 = await localAgentCertificate(ws.dir, 'c1');
  const agent = agentWith(ws, server, c1.cert, c1.key, ['--cluster-name=c2']);
  try {
    await agent.waitFor(/connected to tunnel server/);
    t.pass();
  } finally {
    await agent.stop();
    await server.stop();
    ws.cleanup();
  }
});

test.serial('an agent\'s certificate may not dial through the frontends; a client\'s may', async (t) => {
  const ws = await workspace();
  const target = await httpTarget('c1');
  const server = await startServer(ws);
  const agent = await startAgent(ws, server, 'c1');
  try {
    const c1 = await localAgentCertificate(ws.dir, 'c1');
    const asAgent = await clientTls(ws, c1.cert, c1.key);
    const err = await t.throwsAsync(dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls: asAgent }, `c1:${target.port}`), { instanceOf: ProxyError });
    t.is(err?.statusCode, 403);
    t.regex(err?.body ?? '', /is an agent's, which may not dial through the tunnel server/);
    const socket = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls: await clientTls(ws) }, `c1:${target.port}`);
    socket.destroy();
    t.is(await metric(server.healthPort, `${SERVER_METRIC}_http_connect_requests_total{outcome="forbidden"}`), 1);
  } finally {
    await agent.stop();
    await server.stop();
    await target.close();
    ws.cleanup();
  }
});

test.serial('the agent port and the frontends can trust different CAs (--cluster-ca-cert)', async (t) => {
  const ws = await workspace();
  const target = await httpTarget('c1');
  // A second CA, for agents only.
  const agentsCa = createCa('agents CA');
  const agentCert = issueCertificate(agentsCa, { commonName: 'tunnel:agent:c1', organization: ['tunnel:agents'], usage: 'client' });
  const dir = join(ws.dir, 'agents-ca');
  mkdirSync(dir);
  const file = (name: string, text: string) => { writeFileSync(join(dir, name), text, { mode: 0o600 }); return join(dir, name); };
  const caPath = file('ca.crt', agentsCa.certPem);
  const certPath = file('c1.crt', agentCert.certPem);
  const keyPath = file('c1.key', agentCert.keyPem);
  const server = await startServer(ws, [`--cluster-ca-cert=${caPath}`]);
  try {
    // An agent certificate from the frontends' CA is refused at the handshake now.
    const local = await localAgentCertificate(ws.dir, 'c1');
    const refused = agentWith(ws, server, local.cert, local.key, ['--cluster-name=c1']);
    await refused.waitFor(/cannot connect to the tunnel server; retrying/);
    await refused.stop();
    t.is(await metric(server.healthPort, `${SERVER_METRIC}_ready_backends`), 0);
    // One from the agents' CA connects, and clients of the local CA reach its cluster.
    const agent = agentWith(ws, server, certPath, keyPath, ['--cluster-name=c1']);
    try {
      await agent.waitFor(/connected to tunnel server/);
      const socket = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls: await clientTls(ws) }, `c1:${target.port}`);
      socket.destroy();
      t.is((await httpGet(server.healthPort, '/readyz')).status, 200);
    } finally {
      await agent.stop();
    }
  } finally {
    await server.stop();
    await target.close();
    ws.cleanup();
  }
});
