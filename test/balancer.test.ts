/**
 * Several servers behind one balanced address: an agent whose downlink connection lands on
 * another server than its uplink tries new connections until the pair is on one server, so
 * it ends up with a split stream to every server; and a client of any server reaches the
 * cluster, bytes whole.
 */
import test from 'ava';
import net from 'node:net';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';
import { echoTarget, exchange, sha256, startAgent, startServer, workspace, type ServerHandle } from './helpers/system.js';

/** A TCP balancer on 127.0.0.1 that sends each new connection to the next backend in turn. */
async function roundRobin(ports: number[]): Promise<{ port: number; close(): void }> {
  let next = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const backend = net.connect({ host: '127.0.0.1', port: ports[next++ % ports.length] });
    for (const s of [client, backend]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => { client.destroy(); backend.destroy(); });
    }
    client.pipe(backend).pipe(client);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => { for (const s of sockets) s.destroy(); server.close(); },
  };
}

test('an agent behind a round-robin balancer holds a split stream to each of three servers, and every server reaches its cluster', async (t) => {
  const ws = await workspace();
  const servers: ServerHandle[] = [];
  const target = await echoTarget();
  let balancer: { port: number; close(): void } | undefined;
  try {
    for (const id of ['s1', 's2', 's3']) servers.push(await startServer(ws, ['--server-count=3', `--server-id=${id}`], id));
    balancer = await roundRobin(servers.map((s) => s.agentPort));
    const agent = await startAgent(ws, { agentPort: balancer.port }, 'cluster-a');
    for (const id of ['s1', 's2', 's3']) await agent.proc.waitFor(new RegExp(`connected to tunnel server serverID=${id} serverCount=3 flowControl=on streams=split`), 20_000);
    t.notRegex(agent.proc.output, /cannot connect to the tunnel server; retrying/);
    const tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
    for (const server of servers) {
      const payload = randomBytes(2 * 1024 * 1024);
      const socket = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, `cluster-a:${target.port}`);
      t.is(await exchange(socket, payload, payload.length), sha256(payload));
      socket.destroy();
    }
    await agent.stop();
  } finally {
    balancer?.close();
    for (const server of servers) await server.stop();
    await target.close();
    ws.cleanup();
  }
});
