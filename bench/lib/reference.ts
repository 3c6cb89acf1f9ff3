/**
 * The reference implementation (apiserver-network-proxy's proxy-server and proxy-agent,
 * built from its release tag) as one more path for the churn scenario, when the bench is
 * given the directory of its binaries (--reference DIR). Nothing of it is part of the
 * project: the bench only starts the binaries it is pointed at, on 127.0.0.1, with the
 * scenario's own certificates, so both implementations pay for the same handshakes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, closeSync, constants, openSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import type { LocalPkiPaths } from '../../lib/pki/local-pki.js';
import { stopChild, track, type Scope } from './scope.js';

export interface ReferenceBinaries {
  server: string;
  agent: string;
}

export interface ReferenceTunnel {
  /** The HTTP-CONNECT frontend (mTLS) on 127.0.0.1. */
  connectPort: number;
  serverPid: number;
  agentPid: number;
}

const READY_LIMIT_MS = 30_000;

/**
 * The binaries in `dir`, under the names `go build ./cmd/server` and `./cmd/agent` give them
 * (`server`, `agent`) or their image names (`proxy-server`, `proxy-agent`).
 */
export function referenceBinaries(dir: string): ReferenceBinaries {
  const find = (names: string[]) => {
    for (const name of names) {
      const path = join(dir, name);
      try {
        accessSync(path, constants.X_OK);
        return path;
      } catch {
        // try the next name
      }
    }
    throw new Error(`--reference ${dir}: no executable ${names.join(' or ')} there; build the reference's ./cmd/server and ./cmd/agent into that directory`);
  };
  return { server: find(['server', 'proxy-server']), agent: find(['agent', 'proxy-agent']) };
}

/** A port free on 127.0.0.1 right now (the reference binaries do not report the ports they bound). */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/**
 * Resolves once GET http://127.0.0.1:port/readyz answers 200: the server has an agent. Fails
 * at once when one of `children` exits, and after READY_LIMIT_MS, with the end of their logs.
 */
async function waitReady(port: number, children: ChildProcess[], logs: string[]): Promise<void> {
  const deadline = Date.now() + READY_LIMIT_MS;
  const tails = () => logs.map((log) => `${log}:\n${lastLines(log, 10)}`).join('\n');
  for (;;) {
    const exited = children.find((child) => child.exitCode !== null || child.signalCode !== null);
    if (exited) throw new Error(`a reference binary exited (${exited.exitCode ?? exited.signalCode}) before the server was ready; the end of their logs:\n${tails()}`);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/readyz`);
      await res.arrayBuffer();
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`the reference server did not become ready (an agent connected) within ${READY_LIMIT_MS} ms; the end of their logs:\n${tails()}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * Starts the reference server in HTTP-CONNECT mode and one reference agent connected to it,
 * both on 127.0.0.1 with the workspace's local PKI: the server's certificate on both of its
 * ports, the client certificate for the agent (it carries clientAuth). The agent dials the
 * CONNECT target as given, so clients ask for 127.0.0.1:PORT.
 */
export async function startReference(scope: Scope, binaries: ReferenceBinaries, pki: LocalPkiPaths): Promise<ReferenceTunnel> {
  const [connectPort, agentPort, healthPort, adminPort, agentHealthPort, agentAdminPort] = await Promise.all(Array.from({ length: 6 }, freePort));
  // Their logs go to files in the workspace, not through this process, whose CPU is the client's.
  const logs: string[] = [];
  const start = (name: string, binary: string, args: string[]) => {
    const log = join(pki.dir, `${name.replace(/ /g, '-')}.log`);
    const fd = openSync(log, 'w');
    const child = spawn(binary, args, { stdio: ['ignore', fd, fd] });
    closeSync(fd);
    logs.push(log);
    track(name, child);
    scope.defer(name, () => stopChild(child));
    return child;
  };
  const server = start('reference server', binaries.server, [
    '--mode=http-connect', '--uds-name=', '--server-id=reference',
    '--server-bind-address=127.0.0.1', `--server-port=${connectPort}`,
    `--server-cert=${pki.serverCert}`, `--server-key=${pki.serverKey}`, `--server-ca-cert=${pki.caCert}`,
    '--agent-bind-address=127.0.0.1', `--agent-port=${agentPort}`,
    `--cluster-cert=${pki.serverCert}`, `--cluster-key=${pki.serverKey}`, `--cluster-ca-cert=${pki.caCert}`,
    '--health-bind-address=127.0.0.1', `--health-port=${healthPort}`, `--admin-port=${adminPort}`,
  ]);
  const agent = start('reference agent', binaries.agent, [
    '--agent-id=reference-agent', '--proxy-server-host=127.0.0.1', `--proxy-server-port=${agentPort}`,
    `--ca-cert=${pki.caCert}`, `--agent-cert=${pki.clientCert}`, `--agent-key=${pki.clientKey}`,
    '--health-server-host=127.0.0.1', `--health-server-port=${agentHealthPort}`, `--admin-server-port=${agentAdminPort}`,
  ]);
  await waitReady(healthPort, [server, agent], logs);
  return { connectPort, serverPid: server.pid!, agentPid: agent.pid! };
}

function lastLines(path: string, count: number): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-count).join('\n') || '(empty)';
  } catch (err) {
    return `(unreadable: ${(err as Error).message})`;
  }
}
