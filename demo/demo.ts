/**
 * The all-in-one local demo behind `npm start`: a tunnel server, an agent for the cluster
 * "demo", a sample HTTP target in that "cluster", and one request through the tunnel (pull:
 * the hub reaches into the cluster); a sample hub service behind the server's reverse proxy,
 * and one request from the cluster to it through the agent's push listener (push: the
 * cluster reaches the hub inside the same tunnel). All on loopback with the local PKI. It
 * stays up so curl can be pointed at it.
 *
 * With `kube`, the server's and the agent's certificates come from a hub cluster instead:
 * the Kubernetes API double stands in for it, the server approves and signs their
 * certificate requests, and both renew theirs every minute or so while the tunnel stays up.
 */
import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ensureLocalPki, localPkiPaths } from '../lib/pki/local-pki.js';
import { FileTlsSource, fileCaBundle, localAgentTlsSource, localPkiTlsSource, withTrust } from '../lib/pki/tls-source.js';
import { agentCertificates, serverCertificates, signerNames } from '../lib/cli/kube-certificates.js';
import { loadKube } from '../lib/kube/kube-config.js';
import { logger } from '../lib/observe/log.js';
import { HUB_NAMESPACE, SERVER_ACCOUNT, SIGNER_DOMAIN, serviceAccountUser, startHub } from '../harness/hub.js';
import { TunnelServer } from '../lib/server/tunnel-server.js';
import { TunnelAgent } from '../lib/agent/tunnel-agent.js';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { routeTable } from '../lib/server/reverse-proxy/routes.js';
import { DEFAULT_AGENT_IDENTITY, parseAgentIdentityRule } from '../lib/server/agent-identity.js';
import { AGENT_ORGANIZATION } from '../lib/pki/identities.js';

export interface DemoOptions {
  stateDir: string;
  /** Certificates from the CSR API of an in-process hub (the API double). */
  kube?: boolean;
  clusterName: string;
  agentPort: number;
  serverPort: number;
  targetPort: number;
  out: (line: string) => void;
}

export interface RunningDemo {
  stop(): Promise<void>;
}

const LOOPBACK = '127.0.0.1';

/** The hub service the demo cluster pushes to: it says which cluster the tunnel server named. */
async function startHubService(): Promise<http.Server> {
  const service = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end(`Hello from the hub: ${req.method} ${req.url} came from cluster "${String(req.headers['x-tunnel-cluster'])}" via ${req.headers.via ?? '?'}\n`);
  });
  service.listen(0, LOOPBACK);
  await once(service, 'listening');
  return service;
}

async function startTarget(port: number, cluster: string): Promise<http.Server> {
  const target = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end(`<!DOCTYPE html><html><body><h1>The success test page!</h1><p>Served inside cluster "${cluster}" for ${req.method} ${req.url}</p></body></html>\n`);
  });
  target.listen(port, LOOPBACK);
  const [err] = await Promise.race([once(target, 'listening').then(() => [undefined]), once(target, 'error')]);
  if (err) throw new Error(`cannot start the sample target on ${LOOPBACK}:${port}: ${(err as Error).message} (choose another with --target-port)`);
  return target;
}

function get(socket: import('node:net').Socket, host: string, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get({ createConnection: () => socket, host, path }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => { body += d.toString(); });
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

export async function runDemo(o: DemoOptions): Promise<RunningDemo> {
  const pki = await ensureLocalPki({ stateDir: o.stateDir });
  const target = await startTarget(o.targetPort, o.clusterName);
  const targetPort = (target.address() as AddressInfo).port;

  const hubService = await startHubService();
  const hubServiceUrl = new URL(`http://${LOOPBACK}:${(hubService.address() as AddressInfo).port}`);
  const certificates = o.kube ? await hubCertificates(o) : undefined;
  const serverTls = certificates ? withTrust(certificates.server.tls, await fileCaBundle(certificates.trust, 'demo frontends')) : await localPkiTlsSource(pki, 'server');
  const server = new TunnelServer({
    bindAddress: LOOPBACK, agentPort: o.agentPort, serverPort: o.serverPort, healthBindAddress: LOOPBACK,
    tls: serverTls, agentTls: certificates?.server.tls, proxyStrategies: ['destHost'],
    // Agents serve the cluster their certificate names, which is also who the hub services see.
    agentIdentity: parseAgentIdentityRule(DEFAULT_AGENT_IDENTITY, AGENT_ORGANIZATION),
    // The sample hub service as the built-in /v1/norm route, open to every cluster.
    reverseProxy: { port: 0, routes: routeTable({ norm: { url: hubServiceUrl } }) },
  });
  const addresses = await server.start();

  const agent = new TunnelAgent({
    serverAddress: addresses.agent,
    tls: certificates?.agent.tls ?? await localAgentTlsSource(o.stateDir, o.clusterName),
    agentIdentifiers: new URLSearchParams({ host: o.clusterName }).toString(),
    // The sample target stands in for the cluster's service named like the cluster.
    target: { hostAliases: new Map([[o.clusterName, LOOPBACK]]) },
    pushListen: [{ host: LOOPBACK, port: 0, route: 'norm' }],
  });
  await agent.start();
  const ready = Date.now() + 10_000;
  while (server.registry.size === 0 || !agent.pushReady) {
    if (Date.now() > ready) throw new Error(`the demo agent did not connect to ${addresses.agent} within 10 s`);
    await new Promise((r) => setTimeout(r, 20));
  }

  const address = `${o.clusterName}:${targetPort}`;
  const clientTls = certificates
    ? await FileTlsSource.load({ ca: certificates.serverCa, cert: pki.clientCert, key: pki.clientKey, role: 'demo client' })
    : await localPkiTlsSource(pki, 'client');
  const socket = await dialHttpConnect({ host: LOOPBACK, port: Number(addresses.httpConnect!.split(':').pop()), tls: clientTls }, address);
  const body = await get(socket, o.clusterName, '/success');
  const pushAddress = agent.pushAddresses[0];
  const pushed = await new Promise<string>((resolve, reject) => {
    http.get(`http://${pushAddress}/hello`, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => { text += d.toString(); });
      res.on('end', () => resolve(text));
    }).on('error', reject);
  });

  o.out(`Tunnel up: agent for cluster "${o.clusterName}" connected to ${addresses.agent}; HTTP-CONNECT on ${addresses.httpConnect}.`);
  o.out(`GET http://${address}/success through the tunnel:`);
  o.out('HTML Response:');
  o.out(body.trimEnd());
  o.out('');
  o.out('Try it yourself (curl goes through the tunnel with the local PKI\'s client certificate):');
  o.out(`  curl -p --proxy https://${addresses.httpConnect} --proxy-cacert ${certificates?.serverCa ?? pki.caCert} --proxy-cert ${pki.clientCert} --proxy-key ${pki.clientKey} http://${address}/success`);
  o.out('');
  o.out(`Push: the agent listens on ${pushAddress} in the cluster and carries connections in its tunnel to the server's route norm (/v1/norm), a sample hub service:`);
  o.out(`GET http://${pushAddress}/hello from inside the cluster:`);
  o.out(pushed.trimEnd());
  o.out('Try it yourself:');
  o.out(`  curl http://${pushAddress}/hello`);
  if (certificates) o.out(`The server's and the agent's certificates come from the hub's CSR API (an in-process API server at ${certificates.hub.api.url}) and are renewed about every ${Math.round(DEMO_CERT_LIFETIME_S * 0.8)} s: watch the log.`);
  o.out('Press Ctrl-C to stop.');

  return {
    async stop() {
      await agent.stop();
      await server.stop();
      certificates?.close();
      await certificates?.hub.close();
      target.closeAllConnections();
      await new Promise((resolve) => target.close(resolve));
      hubService.closeAllConnections();
      await new Promise((resolve) => hubService.close(resolve));
    },
  };
}

/** How long the demo's certificates live, so that renewals show within a minute or two. */
const DEMO_CERT_LIFETIME_S = 60;

/**
 * A hub for the demo: the API double with the tunnel's accounts, the server's certificate
 * and the agent's from its CSR API, and the tunnel CA bundle saved for curl.
 */
async function hubCertificates(o: DemoOptions) {
  const dir = join(o.stateDir, 'demo-hub');
  rmSync(dir, { recursive: true, force: true });
  const hub = await startHub(dir, [o.clusterName]);
  const log = logger('demo');
  const server = await serverCertificates({
    kube: loadKube({ kubeconfig: hub.serverKubeconfig }),
    namespace: HUB_NAMESPACE,
    signers: signerNames(SIGNER_DOMAIN),
    caSecret: 'tunnel-ca',
    caBundleConfigMap: 'tunnel-ca',
    approve: true,
    serverRequesters: [serviceAccountUser(SERVER_ACCOUNT)],
    agentRequester: serviceAccountUser('tunnel-agent-{cluster}'),
    maxLifetimeSeconds: DEMO_CERT_LIFETIME_S,
    lifetimeSeconds: 600,
    names: { static: { dnsNames: ['localhost'], ips: [LOOPBACK] } },
    certDir: join(dir, 'certs'),
    log,
  });
  const agent = await agentCertificates({
    kube: loadKube({ kubeconfig: hub.agentKubeconfig(o.clusterName) }),
    cluster: o.clusterName,
    signer: signerNames(SIGNER_DOMAIN).agent,
    trust: { namespace: HUB_NAMESPACE, configMap: 'tunnel-ca' },
    lifetimeSeconds: 600,
    certDir: join(dir, 'certs'),
    log,
  });
  const serverCa = join(dir, 'tunnel-ca.crt');
  writeFileSync(serverCa, server.tls.current().ca);
  return {
    hub, server, agent, serverCa,
    /** Frontend clients still use the local PKI's client certificate. */
    trust: localPkiPaths(o.stateDir).caCert,
    close: () => {
      agent.close();
      server.close();
    },
  };
}
