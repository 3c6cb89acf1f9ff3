/**
 * The all-in-one local demo behind `npm start`: a tunnel server, an agent for the cluster
 * "demo", a sample HTTP target in that "cluster", and one request through the tunnel, all
 * on loopback with the local PKI. It stays up so curl can be pointed at it.
 */
import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { ensureLocalPki } from '../lib/pki/local-pki.js';
import { localAgentTlsSource, localPkiTlsSource } from '../lib/pki/tls-source.js';
import { TunnelServer } from '../lib/server/tunnel-server.js';
import { TunnelAgent } from '../lib/agent/tunnel-agent.js';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';

export interface DemoOptions {
  stateDir: string;
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

  const server = new TunnelServer({
    bindAddress: LOOPBACK, agentPort: o.agentPort, serverPort: o.serverPort, healthBindAddress: LOOPBACK,
    tls: await localPkiTlsSource(pki, 'server'), proxyStrategies: ['destHost'],
  });
  const addresses = await server.start();

  const agent = new TunnelAgent({
    serverAddress: addresses.agent,
    tls: await localAgentTlsSource(o.stateDir, o.clusterName),
    agentIdentifiers: new URLSearchParams({ host: o.clusterName }).toString(),
    // The sample target stands in for the cluster's service named like the cluster.
    target: { hostAliases: new Map([[o.clusterName, LOOPBACK]]) },
  });
  await agent.start();
  const ready = Date.now() + 10_000;
  while (server.registry.size === 0) {
    if (Date.now() > ready) throw new Error(`the demo agent did not connect to ${addresses.agent} within 10 s`);
    await new Promise((r) => setTimeout(r, 20));
  }

  const address = `${o.clusterName}:${targetPort}`;
  const socket = await dialHttpConnect({ host: LOOPBACK, port: Number(addresses.httpConnect!.split(':').pop()), tls: await localPkiTlsSource(pki, 'client') }, address);
  const body = await get(socket, o.clusterName, '/success');

  o.out(`Tunnel up: agent for cluster "${o.clusterName}" connected to ${addresses.agent}; HTTP-CONNECT on ${addresses.httpConnect}.`);
  o.out(`GET http://${address}/success through the tunnel:`);
  o.out('HTML Response:');
  o.out(body.trimEnd());
  o.out('');
  o.out('Try it yourself (curl goes through the tunnel with the local PKI\'s client certificate):');
  o.out(`  curl -p --proxy https://${addresses.httpConnect} --proxy-cacert ${pki.caCert} --proxy-cert ${pki.clientCert} --proxy-key ${pki.clientKey} http://${address}/success`);
  o.out('Press Ctrl-C to stop.');

  return {
    async stop() {
      await agent.stop();
      await server.stop();
      target.closeAllConnections();
      await new Promise((resolve) => target.close(resolve));
    },
  };
}
