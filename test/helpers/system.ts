/**
 * Whole-system fixtures: the real binaries as child processes on 127.0.0.1 and unix
 * sockets in a temp dir, and small in-process targets.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { once } from 'node:events';
import { setLogLevel } from '../../lib/observe/log.js';
import { run, type Proc, type Workspace } from '../../harness/processes.js';

export * from '../../harness/processes.js';

// The in-process PKI setup need not narrate; the binaries keep their own log level.
setLogLevel('warn');

function addressOf(proc: Proc, service: string): Promise<string> {
  return proc.waitFor(new RegExp(`service=${service} address=(\\S+)`)).then((m) => m[1]);
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
  const fixedProxyPort = extra.find((a) => a.startsWith('--reverse-proxy-port='));
  const proc = run('tunnel-server', [
    `--state-dir=${ws.dir}`, '--bind-address=127.0.0.1', '--health-bind-address=127.0.0.1',
    ...(fixedAgentPort ? [] : ['--agent-port=0']), ...(fixedProxyPort ? [] : ['--reverse-proxy-port=0']), '--server-port=0', '--health-port=0', '--grpc-port=0',
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

/**
 * Writes `size` random bytes to an echo and reads them back: whether exactly those bytes came
 * back (length and sha256). Rejects if the connection fails or closes first. A connection may
 * be checked again later.
 */
export function echoed(conn: NodeJS.ReadWriteStream & { once(event: string, listener: (...args: unknown[]) => void): unknown }, size: number): Promise<boolean> {
  const payload = randomBytes(size);
  const hash = createHash('sha256');
  let received = 0;
  return new Promise((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      hash.update(chunk);
      received += chunk.length;
      if (received < size) return;
      conn.off('data', onData);
      conn.off('error', reject);
      conn.off('close', onClose);
      resolve(received === size && hash.digest('hex') === sha256(payload));
    };
    const onClose = () => reject(new Error(`the connection closed after ${received} of ${size} echoed bytes`));
    conn.on('data', onData);
    conn.once('error', reject);
    conn.once('close', onClose);
    conn.write(payload);
  });
}
