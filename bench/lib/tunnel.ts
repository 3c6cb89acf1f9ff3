/**
 * Our tunnel for a scenario: a fresh workspace (temp dir with its own local PKI), the real
 * tunnel-server and tunnel-agent binaries as child processes on 127.0.0.1 and a unix socket,
 * and the client's TLS material. Everything is registered with the scenario's Scope first,
 * so a failed start leaves nothing behind.
 */
import { join } from 'node:path';
import { run, metric, workspace, type Proc, type Workspace } from '../../harness/processes.js';
import { localPkiTlsSource, type TlsSource } from '../../lib/pki/tls-source.js';
import type { HttpConnectProxy } from '../../lib/client/http-connect-dialer.js';
import type { GrpcProxy } from '../../lib/client/grpc-dialer.js';
import { stopChild, track, trackDir, type Scope } from './scope.js';

/** The agent serves dials to `bench:PORT`, with `bench` aliased to 127.0.0.1. */
export const CLUSTER = 'bench';

export interface TunnelServer {
  proc: Proc;
  pid: number;
  agentPort: number;
  connectPort: number;
  healthPort: number;
  grpcUds: string;
}

export interface TunnelAgent {
  proc: Proc;
  pid: number;
  healthPort: number;
}

export interface Tunnel {
  ws: Workspace;
  server: TunnelServer;
  agent: TunnelAgent;
  clientTls: TlsSource;
  /** HTTP-CONNECT frontend over mTLS TCP. */
  connectProxy: HttpConnectProxy;
  /** gRPC frontend on the unix socket. */
  grpcProxy: GrpcProxy;
}

function startBinary(scope: Scope, binary: string, args: string[]): Proc {
  const proc = run(binary, args);
  track(binary, proc.child);
  scope.defer(binary, () => stopChild(proc.child));
  return proc;
}

async function addressPort(proc: Proc, service: string): Promise<number> {
  const match = await proc.waitFor(new RegExp(`service=${service} address=(\\S+)`), 30_000);
  return Number(match[1].split(':').pop());
}

export async function startWorkspace(scope: Scope): Promise<Workspace> {
  const ws = await workspace();
  scope.defer('workspace', trackDir(ws.dir));
  return ws;
}

export async function startTunnelServer(scope: Scope, ws: Workspace, extra: string[] = []): Promise<TunnelServer> {
  const grpcUds = join(ws.dir, 'grpc.sock');
  const proc = startBinary(scope, 'tunnel-server', [
    `--state-dir=${ws.dir}`, '--bind-address=127.0.0.1', '--health-bind-address=127.0.0.1',
    '--agent-port=0', '--reverse-proxy-port=off', '--server-port=0', '--health-port=0', `--uds-name=${grpcUds}`, ...extra,
  ]);
  await proc.waitFor(/tunnel server started/, 30_000);
  return {
    proc,
    pid: proc.child.pid!,
    grpcUds,
    agentPort: await addressPort(proc, 'agent'),
    connectPort: await addressPort(proc, 'http-connect'),
    healthPort: await addressPort(proc, 'health'),
  };
}

/** Starts the agent, connecting to 127.0.0.1:serverPort (the server's agent port, or a relay in front of it). */
export async function startTunnelAgent(scope: Scope, ws: Workspace, serverPort: number, extra: string[] = []): Promise<TunnelAgent> {
  const proc = startBinary(scope, 'tunnel-agent', [
    `--state-dir=${ws.dir}`, `--cluster-name=${CLUSTER}`, `--tunnelserver-addr=127.0.0.1:${serverPort}`,
    '--health-bind-address=127.0.0.1', '--health-port=0', `--host-alias=${CLUSTER}=127.0.0.1`, ...extra,
  ]);
  const healthPort = await addressPort(proc, 'health');
  await proc.waitFor(/connected to tunnel server/, 30_000);
  return { proc, pid: proc.child.pid!, healthPort };
}

export async function clientSide(scope: Scope, ws: Workspace, server: TunnelServer): Promise<Pick<Tunnel, 'clientTls' | 'connectProxy' | 'grpcProxy'>> {
  const clientTls = await localPkiTlsSource(ws.pki, 'client');
  scope.defer('client TLS source', () => clientTls.close());
  return {
    clientTls,
    connectProxy: { host: '127.0.0.1', port: server.connectPort, tls: clientTls },
    grpcProxy: { uds: server.grpcUds },
  };
}

/** Workspace, server, agent and client TLS, all on loopback. */
export async function startTunnel(scope: Scope): Promise<Tunnel> {
  const ws = await startWorkspace(scope);
  const server = await startTunnelServer(scope, ws);
  const agent = await startTunnelAgent(scope, ws, server.agentPort);
  return { ws, server, agent, ...(await clientSide(scope, ws, server)) };
}

/** The dial address of a target port inside the benchmark "cluster". */
export function inCluster(port: number): string {
  return `${CLUSTER}:${port}`;
}

export const serverMetric = (server: TunnelServer, name: string) =>
  metric(server.healthPort, `konnectivity_network_proxy_server_${name}`);

export const agentMetric = (agent: TunnelAgent, name: string) =>
  metric(agent.healthPort, `konnectivity_network_proxy_agent_${name}`);

/** Full (mark-compact) collections so far in server and agent. */
export async function fullCollections(tunnel: Tunnel): Promise<{ server: number; agent: number }> {
  const read = (port: number) => metric(port, 'nodejs_gc_runs_total{kind="major"}').catch(() => 0);
  return { server: await read(tunnel.server.healthPort), agent: await read(tunnel.agent.healthPort) };
}
