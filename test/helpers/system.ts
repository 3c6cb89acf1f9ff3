/**
 * Whole-system fixtures: the real binaries as child processes on 127.0.0.1 and unix
 * sockets in a temp dir, and small in-process targets.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { ensureLocalPki, type LocalPkiPaths } from '../../lib/pki/local-pki.js';
import { setLogLevel } from '../../lib/observe/log.js';
import { BIN } from './paths.js';

// The in-process PKI setup need not narrate; the binaries keep their own log level.
setLogLevel('warn');

export interface Workspace {
  dir: string;
  pki: LocalPkiPaths;
  cleanup(): void;
}

/** A temp dir with a local PKI, shared by the processes of one test. */
export async function workspace(): Promise<Workspace> {
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-test-'));
  const pki = await ensureLocalPki({ stateDir: dir });
  return { dir, pki, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export class Proc {
  output = '';
  readonly exited: Promise<number | null>;

  constructor(readonly name: string, readonly child: ChildProcess) {
    child.stdout?.on('data', (d: Buffer) => { this.output += d.toString(); });
    child.stderr?.on('data', (d: Buffer) => { this.output += d.toString(); });
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  /** Waits until the output matches `pattern`; returns the match. */
  async waitFor(pattern: RegExp, timeoutMs = 15_000, from = 0): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = this.output.slice(from).match(pattern);
      if (match) return match;
      if (this.child.exitCode !== null) throw new Error(`${this.name} exited (${this.child.exitCode}) before printing ${pattern}:\n${this.output}`);
      if (Date.now() > deadline) throw new Error(`${this.name} did not print ${pattern} within ${timeoutMs} ms:\n${this.output}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

/**
 * Node options of the started binaries: the recommended `--single-threaded-gc` and
 * `--max-semi-space-size=4` (see the README), then any from TUNNEL_NODE_ARGS, e.g.
 * "--cpu-prof --cpu-prof-dir=/tmp/prof" to profile server and agent under a bench scenario.
 */
const NODE_ARGS = ['--single-threaded-gc', '--max-semi-space-size=4', ...(process.env.TUNNEL_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? [])];

/**
 * jemalloc for the started binaries, e.g. TUNNEL_JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
 * (Debian's libjemalloc2), with purging in a background thread: how a deployment that wants
 * memory freed after a mass close back from the process runs them (see the README).
 */
const JEMALLOC = process.env.TUNNEL_JEMALLOC;
const BINARY_ENV = JEMALLOC
  ? { ...process.env, LD_PRELOAD: JEMALLOC, MALLOC_CONF: process.env.MALLOC_CONF ?? 'background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0' }
  : process.env;

/** How the binaries run: their Node options, and the allocator preloaded into them, if any. */
export const BINARY_RUNTIME: { nodeArgs: readonly string[]; preload?: string } = { nodeArgs: NODE_ARGS, ...(JEMALLOC ? { preload: JEMALLOC } : {}) };

export function run(binary: string, args: string[]): Proc {
  const child = spawn(process.execPath, [...NODE_ARGS, join(BIN, `${binary}.js`), ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: BINARY_ENV });
  return new Proc(binary, child);
}

/** Runs a binary to completion. */
export async function runToEnd(binary: string, args: string[], timeoutMs = 30_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [join(BIN, `${binary}.js`), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const [code] = await once(child, 'exit') as [number | null];
  clearTimeout(timer);
  return { code, stdout, stderr };
}

function addressOf(proc: Proc, service: string): Promise<string> {
  return proc.waitFor(new RegExp(`service=${service} address=(\\S+)`)).then((m) => m[1]!);
}

export interface ServerHandle {
  proc: Proc;
  agentPort: number;
  connectPort: number;
  healthPort: number;
  grpcUds: string;
  connectUds: string;
  grpcPort?: number;
  stop(): Promise<number | null>;
}

/** Starts tunnel-server on 127.0.0.1 with every frontend on. */
export async function startServer(ws: Workspace, extra: string[] = [], name = 'server'): Promise<ServerHandle> {
  const grpcUds = join(ws.dir, `${name}-grpc.sock`);
  const connectUds = join(ws.dir, `${name}-connect.sock`);
  const fixedAgentPort = extra.find((a) => a.startsWith('--agent-port='));
  const proc = run('tunnel-server', [
    `--state-dir=${ws.dir}`, '--bind-address=127.0.0.1', '--health-bind-address=127.0.0.1',
    ...(fixedAgentPort ? [] : ['--agent-port=0']), '--server-port=0', '--health-port=0', '--grpc-port=0',
    `--uds-name=${grpcUds}`, `--http-connect-uds=${connectUds}`, ...extra,
  ]);
  const port = async (service: string) => Number((await addressOf(proc, service)).split(':').pop());
  await proc.waitFor(/tunnel server started/);
  return {
    proc, grpcUds, connectUds,
    agentPort: await port('agent'),
    connectPort: await port('http-connect'),
    healthPort: await port('health'),
    grpcPort: await port('grpc'),
    stop: () => proc.stop(),
  };
}

export interface AgentHandle {
  proc: Proc;
  healthPort: number;
  stop(): Promise<number | null>;
}

/** Starts tunnel-agent for `cluster`, with the cluster's name aliased to 127.0.0.1. */
export async function startAgent(ws: Workspace, server: { agentPort: number }, cluster: string, extra: string[] = []): Promise<AgentHandle> {
  const proc = run('tunnel-agent', [
    `--state-dir=${ws.dir}`, `--cluster-name=${cluster}`, `--tunnelserver-addr=127.0.0.1:${server.agentPort}`,
    '--health-bind-address=127.0.0.1', '--health-port=0', `--host-alias=${cluster}=127.0.0.1`, ...extra,
  ]);
  const healthPort = Number((await addressOf(proc, 'health')).split(':').pop());
  await proc.waitFor(/connected to tunnel server/);
  return { proc, healthPort, stop: () => proc.stop() };
}

/** GET on 127.0.0.1:port; resolves with status and body. */
export function httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path, timeout: 5_000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => { body += d.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

/** Reads a metric's value from a /metrics endpoint. */
export async function metric(port: number, name: string): Promise<number> {
  const { body } = await httpGet(port, '/metrics');
  const line = body.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  if (!line) throw new Error(`metric ${name} not found`);
  return Number(line.split(' ').pop());
}

/** Polls until `check` returns true, or throws after timeoutMs. */
export async function eventually(check: () => Promise<boolean> | boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`${what} did not hold within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface Target {
  port: number;
  /** Sockets currently open on the target. */
  readonly open: number;
  close(): Promise<void>;
}

/** An HTTP target on 127.0.0.1: /success answers like the reference test server; /whoami names it. */
export async function httpTarget(name: string): Promise<Target> {
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    if (req.url === '/success') {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      res.end(`<!DOCTYPE html><html><body>The success test page! (${name})</body></html>`);
    } else {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end(`${name} ${req.method} ${req.url}`);
    }
  });
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    get open() { return sockets.size; },
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

/** A TCP echo target on 127.0.0.1: integrity checks compare the sha256 of what comes back. */
export async function echoTarget(): Promise<Target> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    socket.pipe(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    get open() { return sockets.size; },
    close: () => new Promise((resolve) => { for (const s of sockets) s.destroy(); server.close(() => resolve()); }),
  };
}

export function sha256(data: Buffer | Buffer[]): string {
  const hash = createHash('sha256');
  for (const chunk of Array.isArray(data) ? data : [data]) hash.update(chunk);
  return hash.digest('hex');
}

/**
 * Writes `payload` into `socket` (at the pace the socket allows) while reading everything
 * that comes back until `expect` bytes arrived; resolves with the sha256 of what came back.
 */
export function exchange(socket: NodeJS.ReadWriteStream & { end(): unknown; destroy(): unknown }, payload: Buffer, expect: number, timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let received = 0;
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`exchange timed out after ${received}/${expect} bytes`)); }, timeoutMs);
    socket.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      received += chunk.length;
      if (received >= expect) {
        clearTimeout(timer);
        resolve(hash.digest('hex'));
      }
    });
    socket.on('error', (err: Error) => { clearTimeout(timer); reject(err); });
    const step = 256 * 1024;
    let offset = 0;
    const pump = () => {
      while (offset < payload.length) {
        const ok = socket.write(payload.subarray(offset, offset + step));
        offset += step;
        if (!ok) { socket.once('drain', pump); return; }
      }
    };
    pump();
  });
}

/**
 * A port on 127.0.0.1 that nothing listens on, below the kernel's ephemeral range. Tests
 * running alongside listen on port 0 and connect from ephemeral ports, so they cannot take
 * it; and a connection to it cannot become a TCP self-connect, which a just-freed ephemeral
 * port allows (the kernel may pick it as the connection's own source port).
 */
export async function unusedPort(): Promise<number> {
  const low = ephemeralRangeStart();
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = 10_000 + Math.floor(Math.random() * (low - 10_000));
    const server = net.createServer();
    const free = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => resolve(true));
    });
    if (free) {
      await new Promise((resolve) => server.close(resolve));
      return port;
    }
  }
  throw new Error('no unused port on 127.0.0.1 below the ephemeral range in 100 tries');
}

function ephemeralRangeStart(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    if (low > 11_000) return low;
  } catch {
    // Not Linux: the IANA range starts at 49152, Linux's default at 32768.
  }
  return 32_768;
}
