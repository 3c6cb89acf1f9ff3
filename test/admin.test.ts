/**
 * The admin endpoints on the health port: the server's /debug/agents and /debug/connections
 * and the agent's /debug/servers and /debug/connections list the live agent, server stream
 * and connection with the bytes a transfer of known size moved each way; ?limit= bounds the
 * lists, a bad limit is a 400, and nothing in them is a credential.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';
import type { AgentConnectionsReply, AgentServersReply, ServerAgentsReply, ServerConnectionsReply } from '../lib/observe/admin.js';
import { echoTarget, eventually, exchange, httpGet, sha256, startAgent, startServer, workspace } from './helpers/system.js';

async function json<T>(port: number, path: string): Promise<T> {
  const { status, body } = await httpGet(port, path);
  if (status !== 200) throw new Error(`GET ${path}: ${status} ${body}`);
  return JSON.parse(body) as T;
}

test('the admin endpoints list the live agent, server stream and connections with the bytes each way', async (t) => {
  const ws = await workspace();
  const server = await startServer(ws, ['--server-id=hub-1']);
  const agent = await startAgent(ws, server, 'cluster-a', ['--agent-id=agent-a']);
  const target = await echoTarget();
  const tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
  const sockets: Socket[] = [];
  try {
    const sizes = [3 * 1024 * 1024 + 17, 100_003];
    for (const size of sizes) {
      const socket = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, `cluster-a:${target.port}`);
      sockets.push(socket);
      const payload = randomBytes(size);
      t.is(await exchange(socket, payload, payload.length), sha256(payload), `${size} bytes came back whole`);
    }

    const agents = await json<ServerAgentsReply>(server.healthPort, '/debug/agents');
    t.is(agents.serverID, 'hub-1');
    t.is(agents.agents.total, 1);
    const [a] = agents.agents.items;
    t.like(a, { agentID: 'agent-a', cluster: 'cluster-a', serverIDs: ['hub-1'], openConnections: 2, draining: false });
    t.regex(a.remoteAddress, /127\.0\.0\.1/);
    t.true(Date.parse(a.connectedSince) <= Date.now() && a.uptimeSeconds >= 0);
    const total = sizes.reduce((n, s) => n + s, 0);
    t.is(a.bytesToAgent, total, 'every byte sent to the agent');
    t.is(a.bytesFromAgent, total, 'every byte that came back');

    const connections = await json<ServerConnectionsReply>(server.healthPort, '/debug/connections');
    t.is(connections.connections.total, 2);
    const bySize = [...connections.connections.items].sort((x, y) => y.bytesToAgent - x.bytesToAgent);
    sizes.forEach((size, i) => {
      t.like(bySize[i], { agentID: 'agent-a', cluster: 'cluster-a', address: `cluster-a:${target.port}`, state: 'open', bytesToAgent: size, bytesFromAgent: size });
      t.regex(bySize[i].client ?? '', /CN=/, 'the client, by its certificate');
      t.true(bySize[i].ageSeconds >= 0);
    });
    const limited = await json<ServerConnectionsReply>(server.healthPort, '/debug/connections?limit=1');
    t.like(limited.connections, { total: 2, limit: 1, truncated: true });
    t.is(limited.connections.items.length, 1);
    t.is((await httpGet(server.healthPort, '/debug/connections?limit=0')).status, 400);
    t.regex((await httpGet(server.healthPort, '/debug/connections?limit=lots')).body, /limit=lots is not a whole number/);
    t.is((await httpGet(server.healthPort, '/debug/nothing')).status, 404);

    const servers = await json<AgentServersReply>(agent.healthPort, '/debug/servers');
    t.is(servers.agentID, 'agent-a');
    t.is(servers.servers.total, 1);
    t.like(servers.servers.items[0], { serverID: 'hub-1', address: `127.0.0.1:${server.agentPort}`, streams: 'split', openConnections: 2, bytesFromServer: total, bytesToServer: total });
    const agentConnections = await json<AgentConnectionsReply>(agent.healthPort, '/debug/connections');
    t.is(agentConnections.connections.total, 2);
    const agentBySize = [...agentConnections.connections.items].sort((x, y) => y.bytesFromServer - x.bytesFromServer);
    sizes.forEach((size, i) => t.like(agentBySize[i], { serverID: 'hub-1', address: `cluster-a:${target.port}`, state: 'open', bytesFromServer: size, bytesToServer: size }));

    // No credential in any of it.
    const everything = JSON.stringify([agents, connections, servers, agentConnections]);
    t.notRegex(everything, /BEGIN|PRIVATE|[Bb]earer|token/);

    // Closed connections leave the lists; their bytes stay in the agent's totals.
    for (const socket of sockets) socket.destroy();
    await eventually(async () => (await json<ServerConnectionsReply>(server.healthPort, '/debug/connections')).connections.total === 0
      && (await json<AgentConnectionsReply>(agent.healthPort, '/debug/connections')).connections.total === 0, 10_000, 'the connections closed');
    const after = (await json<ServerAgentsReply>(server.healthPort, '/debug/agents')).agents.items[0];
    t.like(after, { openConnections: 0, bytesToAgent: total, bytesFromAgent: total });
  } finally {
    for (const socket of sockets) socket.destroy();
    await agent.stop();
    await server.stop();
    await target.close();
    ws.cleanup();
  }
});
