/**
 * The admin endpoints' lists (/debug/agents, /debug/connections on the server; /debug/servers,
 * /debug/connections on the agent): who is connected and what each connection carried, from
 * what the streams count anyway. No credentials, no payload; at most `limit` items.
 */
import type { Multiplexer } from '../mux/multiplexer.js';
import type { TunnelConnection } from '../mux/tunnel-connection.js';
import type { Backend } from '../server/backend.js';

/** A bounded list: how many there are, and the first `limit`. */
export interface DebugList<T> {
  total: number;
  limit: number;
  truncated: boolean;
  items: T[];
}

export function bounded<T>(all: Iterable<T>, limit: number): DebugList<T> {
  const items: T[] = [];
  let total = 0;
  for (const item of all) {
    if (total++ < limit) items.push(item);
  }
  return { total, limit, truncated: total > limit, items };
}

function seconds(sinceMs: number, now: number): number {
  return Math.round((now - sinceMs) / 100) / 10;
}

/** What both ends show of a connection. */
function connectionFields(conn: TunnelConnection, now: number) {
  const windows = conn.windows;
  return {
    connectID: String(conn.connectID),
    address: conn.address,
    openedAt: new Date(conn.openedAt).toISOString(),
    ageSeconds: seconds(conn.openedAt, now),
    state: conn.state,
    windowStalls: conn.windowStalls,
    ...(windows ? { sendCreditBytes: windows.sendCredit, receiveWindowBytes: windows.receiveWindow } : {}),
  };
}

/** The cluster an agent serves: its first host identifier. */
function clusterOf(backend: Backend): string | undefined {
  return backend.identifiers.host[0];
}

/** The server's agents, one item per agent, its streams summed. */
export function serverAgents(serverID: string, backends: Backend[], limit: number) {
  const now = Date.now();
  const byAgent = new Map<string, Backend[]>();
  for (const b of backends) byAgent.set(b.agentID, [...(byAgent.get(b.agentID) ?? []), b]);
  const items = function* () {
    for (const [agentID, streams] of byAgent) {
      const first = streams[0];
      const stats = streams.map((b) => b.mux.stats);
      const sum = (key: 'connections' | 'bytesReceived' | 'bytesSent' | 'windowStalls' | 'pendingDials') => stats.reduce((n, s) => n + s[key], 0);
      yield {
        agentID,
        cluster: clusterOf(first),
        identifiers: { host: first.identifiers.host, ipv4: first.identifiers.ipv4, ipv6: first.identifiers.ipv6, defaultRoute: first.identifiers.defaultRoute },
        serverIDs: [serverID],
        remoteAddress: first.peer,
        connectedSince: first.connectedAt.toISOString(),
        uptimeSeconds: seconds(first.connectedAt.getTime(), now),
        streams: streams.length,
        draining: streams.every((b) => b.mux.draining),
        openConnections: sum('connections'),
        pendingDials: sum('pendingDials'),
        bytesFromAgent: sum('bytesReceived'),
        bytesToAgent: sum('bytesSent'),
        windowStalls: sum('windowStalls'),
      };
    }
  };
  return { serverID, agents: bounded(items(), limit) };
}

/** The server's tunneled connections through agents. */
export function serverConnections(serverID: string, backends: Backend[], limit: number) {
  const now = Date.now();
  const items = function* () {
    for (const b of backends) {
      for (const conn of b.mux.openConnections()) {
        yield {
          agentID: b.agentID,
          cluster: clusterOf(b),
          ...connectionFields(conn, now),
          client: conn.client,
          bytesToAgent: conn.bytesSent,
          bytesFromAgent: conn.bytesReceived,
        };
      }
    }
  };
  return { serverID, connections: bounded(items(), limit) };
}

/** One of the agent's streams to a server. */
export interface AgentServerStream {
  serverID: string;
  address: string;
  split: boolean;
  mux: Multiplexer;
  push?: Multiplexer;
}

/** The agent's streams to servers. */
export function agentServers(agentID: string, streams: AgentServerStream[], limit: number) {
  const now = Date.now();
  const items = streams.map((s) => {
    const stats = s.mux.stats;
    return {
      serverID: s.serverID,
      address: s.address,
      connectedSince: new Date(s.mux.openedAt).toISOString(),
      uptimeSeconds: seconds(s.mux.openedAt, now),
      streams: s.split ? 'split' : 'single',
      push: s.push !== undefined && !s.push.isClosed,
      openConnections: stats.connections,
      bytesFromServer: stats.bytesReceived,
      bytesToServer: stats.bytesSent,
      windowStalls: stats.windowStalls,
    };
  });
  return { agentID, servers: bounded(items, limit) };
}

/** The agent's connections to targets, by the server stream they came on. */
export function agentConnections(agentID: string, streams: AgentServerStream[], limit: number) {
  const now = Date.now();
  const items = function* () {
    for (const s of streams) {
      for (const conn of s.mux.openConnections()) {
        yield { serverID: s.serverID, ...connectionFields(conn, now), bytesToServer: conn.bytesSent, bytesFromServer: conn.bytesReceived };
      }
    }
  };
  return { agentID, connections: bounded(items(), limit) };
}

/** What the endpoints answer, for programs that read them. */
export type ServerAgentsReply = ReturnType<typeof serverAgents>;
export type ServerConnectionsReply = ReturnType<typeof serverConnections>;
export type AgentServersReply = ReturnType<typeof agentServers>;
export type AgentConnectionsReply = ReturnType<typeof agentConnections>;
