/**
 * 8. push: push mode, an add-on of a managed cluster reaching a hub service. The hub service
 * is an HTTP server in a child process of its own (this file, run with SERVE_FLAG): GET
 * /bytes?n=N&offset=O answers N bytes of the shared stream (content.ts), POST /sink answers
 * the length and sha256 of the body it read. It is reached three ways: directly (the
 * baseline), through the tunnel server's reverse-proxy port (HTTPS, the local PKI's agent
 * certificate of the cluster, route /v1/norm), and through the agent's push listener (plain
 * HTTP to the agent, carried in its tunnel to the server's norm route). Downloads are
 * checked where they arrive, by the client; uploads by what the service read (its length
 * and sha256, which the client compares with what it sent). Then small GETs on kept-alive
 * connections, one and 32 at a time. The paths take turns round after round, and each
 * figure is the median round.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { fileURLToPath } from 'node:url';
import { serve } from '../lib/helper-main.js';
import type { Scope } from '../lib/scope.js';
import { forkHelper } from '../lib/helpers.js';
import { Received, mismatch, payload, slices, type Payload } from '../lib/content.js';
import { integrityFailure } from '../lib/integrity.js';
import { formatBytes, mbps, medianBy, now, percentile, pool, KiB, MiB, type Transfer } from '../lib/measure.js';
import { cpuMeter, formatCpu, formatCpuPer } from '../lib/cpu.js';
import { CLUSTER, startTunnelAgent, startTunnelServer, startWorkspace } from '../lib/tunnel.js';
import { localAgentCertificate } from '../../lib/pki/local-pki.js';
import { failedRun, roundLabels, transferNote, type Run } from './bulk.js';
import type { Config, Context, Scenario } from '../lib/scenario.js';

const DIRECTIONS = ['download', 'upload'] as const;
type Direction = typeof DIRECTIONS[number];
const DIRECT = 'direct';
const PROXY = 'reverse-proxy port';
const PUSH = 'push listener';
const PATHS = [DIRECT, PROXY, PUSH];
const RATIO_TARGET = 0.3;
/** Per path and direction before the rounds (V8 warms up in the client, the service and the tunnel). */
const WARMUP_BYTES = 32 * MiB;
const SMALL_BYTES = KiB;
const CONCURRENCY = 32;
/** Small GETs per path before they are measured: a request runs the proxies' whole HTTP code once. */
const WARMUP_REQUESTS = 3_000;
/** One small GET may take this long before its path counts as failed. */
const REQUEST_LIMIT_MS = 10_000;
const START = 'start hub service and tunnel (reverse-proxy port, push listener)';
/** Makes this file the hub service's process (see the end of the file). */
const SERVE_FLAG = '--serve-push-hub';

/** How much each measurement moves: a quarter of bulk's bytes, and request counts scaled alike. */
function sizes(config: Config) {
  // The TUNNEL_BENCH_SCALE factor, as makeConfig applied it to bulk's size (1 for the real bench).
  const scale = config.bulkBytes / (config.full ? 1024 * MiB : 256 * MiB);
  const count = (n: number) => Math.max(50, Math.round(n * scale));
  return {
    bytes: Math.max(MiB, Math.round(config.bulkBytes / 4)),
    warmupBytes: Math.max(MiB, Math.round(WARMUP_BYTES * scale)),
    warmupRequests: count(WARMUP_REQUESTS),
    /** Requests per run, by how many are in flight at once. */
    requests: { 1: count(config.full ? 5_000 : 1_000), [CONCURRENCY]: count(config.full ? 32_000 : 6_400) } as Record<number, number>,
  };
}

/** The hub service, as it runs in its child process. */
function hubService(): http.Server {
  const server = http.createServer({ noDelay: true }, (req, res) => {
    const url = new URL(req.url ?? '/', 'http://hub');
    if (req.method === 'GET' && url.pathname === '/bytes') {
      req.resume();
      const n = Number(url.searchParams.get('n'));
      const offset = Number(url.searchParams.get('offset') ?? 0);
      if (!Number.isSafeInteger(n) || n < 0 || !Number.isSafeInteger(offset) || offset < 0) {
        res.writeHead(400, { 'Content-Type': 'text/plain' }).end(`bad n or offset in ${req.url}\n`);
        return;
      }
      res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': n });
      const pieces = slices(offset, n);
      const pump = () => {
        for (let next = pieces.next(); !res.destroyed; next = pieces.next()) {
          if (next.done) {
            res.end();
            return;
          }
          if (!res.write(next.value)) {
            res.once('drain', pump);
            return;
          }
        }
      };
      pump();
      return;
    }
    if (req.method === 'POST' && url.pathname === '/sink') {
      const hash = createHash('sha256');
      let length = 0;
      req.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        length += chunk.length;
      });
      req.on('end', () => {
        const body = JSON.stringify({ length, sha256: hash.digest('hex') });
        res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) }).end(body);
      });
      return;
    }
    req.resume();
    res.writeHead(404, { 'Content-Type': 'text/plain' }).end(`the hub service has no ${req.method} ${url.pathname}\n`);
  });
  // Kept-alive connections stay open between the rounds; an upload of a slow path takes what it takes.
  server.keepAliveTimeout = 120_000;
  server.requestTimeout = 0;
  return server;
}

/** The hub service as a child process (its own event loop, as the other scenarios' targets). */
async function startHubService(scope: Scope): Promise<{ pid: number; port: number }> {
  return forkHelper(scope, fileURLToPath(import.meta.url), [SERVE_FLAG], 'hub service');
}

/** One way to the hub service: where to send requests, and how. */
interface HttpPath {
  label: string;
  /** The processes a request on this path goes through (for CPU accounting), by role. */
  pids: Record<string, number>;
  port: number;
  /** What the service's paths start with on this path. */
  prefix: string;
  /** An agent that keeps up to `sockets` connections open between requests. */
  agent(sockets: number): http.Agent;
  request(options: http.RequestOptions, onResponse: (res: http.IncomingMessage) => void): http.ClientRequest;
}

/** Kept-alive connections to a path, and every socket its requests went out on. */
interface Connections {
  agent: http.Agent;
  sockets: Set<unknown>;
}

function send(path: HttpPath, conns: Connections, options: http.RequestOptions, onResponse: (res: http.IncomingMessage) => void): http.ClientRequest {
  const req = path.request({ host: '127.0.0.1', port: path.port, agent: conns.agent, ...options }, onResponse);
  req.on('socket', (socket) => {
    conns.sockets.add(socket);
    socket.setNoDelay(true);
  });
  return req;
}

/** Settles once, bounded by `limitMs` (then `onLimit`); `isDone` guards handlers that fire after. */
function settler<T>(limitMs: number, onLimit: () => T, abort: () => void) {
  let settle!: { resolve: (v: T) => void; reject: (e: Error) => void };
  const promise = new Promise<T>((resolve, reject) => { settle = { resolve, reject }; });
  let done = false;
  const finish = (value: T | Error) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    if (value instanceof Error) settle.reject(value);
    else settle.resolve(value);
    abort();
  };
  const timer = setTimeout(() => finish(onLimit()), limitMs);
  return { promise, finish, isDone: () => done };
}

/** A response that is not 200: its status and what it said, as an error (not an integrity failure). */
function refused(res: http.IncomingMessage, what: string, finish: (e: Error) => void): void {
  const chunks: Buffer[] = [];
  res.on('data', (c: Buffer) => chunks.push(c));
  const done = () => finish(new Error(`${what}: ${res.statusCode} ${Buffer.concat(chunks).toString().trim().slice(0, 300)}`));
  res.once('end', done);
  res.once('error', done);
}

/**
 * GETs the payload's bytes and takes the response: exactly the payload's length, with its
 * sha256, or an integrity failure (thrown), also when the response ended before its
 * Content-Length. Time runs from the request to the last byte.
 */
function httpDownload(path: HttpPath, conns: Connections, expected: Payload, limitMs: number): Promise<Transfer> {
  const what = `GET of ${expected.bytes} bytes from offset ${expected.offset} via ${path.label}`;
  const start = now();
  const received = new Received();
  let seconds = 0;
  const result = (complete: boolean): Transfer => ({ bytes: received.bytes, seconds: seconds || (now() - start) / 1000, complete });
  // The request is made right below; the settler only calls back later.
  const s = settler(limitMs, () => result(false), () => req.destroy());
  const req = send(path, conns, { method: 'GET', path: `${path.prefix}/bytes?n=${expected.bytes}&offset=${expected.offset}` }, (res) => {
    if (res.statusCode !== 200) {
      refused(res, what, s.finish);
      return;
    }
    res.on('data', (chunk: Buffer) => {
      received.update(chunk);
      if (seconds === 0 && received.bytes >= expected.bytes) seconds = (now() - start) / 1000;
    });
    // Ended, or cut off before its length: either way what arrived is what is checked.
    const verdict = () => {
      if (s.isDone()) return;
      const problem = mismatch(`${what}, then the response ended`, { bytes: received.bytes, sha256: received.digest() }, expected);
      s.finish(problem ? integrityFailure(problem) : result(true));
    };
    res.once('end', verdict);
    res.once('error', verdict);
    res.once('close', verdict);
  });
  req.once('error', (err) => s.finish(new Error(`${what}: ${err.message}`)));
  req.end();
  return s.promise;
}

/**
 * POSTs the payload's bytes at the pace the connection allows; the service answers the
 * length and sha256 of what it read, which must be the payload's (else an integrity failure,
 * thrown). Time runs from the request to the answer.
 */
function httpUpload(path: HttpPath, conns: Connections, sent: Payload, limitMs: number): Promise<Transfer> {
  const what = `POST of ${sent.bytes} bytes from offset ${sent.offset} via ${path.label}`;
  const start = now();
  let written = 0;
  const result = (complete: boolean): Transfer => ({
    bytes: complete ? sent.bytes : Math.max(0, written - req.writableLength),
    seconds: (now() - start) / 1000,
    complete,
  });
  // The request is made right below; the settler only calls back later.
  const s = settler(limitMs, () => result(false), () => req.destroy());
  const req = send(path, conns, {
    method: 'POST',
    path: `${path.prefix}/sink`,
    headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(sent.bytes) },
  }, (res) => {
    if (res.statusCode !== 200) {
      refused(res, what, s.finish);
      return;
    }
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.once('error', (err) => s.finish(new Error(`${what}: the answer broke off: ${err.message}`)));
    res.once('end', () => {
      let read: { length?: unknown; sha256?: unknown };
      try {
        read = JSON.parse(Buffer.concat(chunks).toString()) as typeof read;
      } catch {
        s.finish(new Error(`${what}: the answer is not JSON: ${Buffer.concat(chunks).toString().slice(0, 200)}`));
        return;
      }
      const problem = mismatch(`${what}: what the service read`, { bytes: Number(read.length), sha256: String(read.sha256) }, sent);
      s.finish(problem ? integrityFailure(problem) : result(true));
    });
  });
  req.once('error', (err) => s.finish(new Error(`${what}: ${err.message}`)));
  const pieces = slices(sent.offset, sent.bytes);
  const pump = () => {
    for (let next = pieces.next(); !s.isDone(); next = pieces.next()) {
      if (next.done) {
        req.end();
        return;
      }
      written += next.value.length;
      if (!req.write(next.value)) {
        req.once('drain', pump);
        return;
      }
    }
  };
  pump();
  return s.promise;
}

/** `sockets` kept-alive connections to the path, opened (and checked) by empty GETs before any clock starts. */
async function openConnections(path: HttpPath, sockets: number): Promise<Connections> {
  const conns: Connections = { agent: path.agent(sockets), sockets: new Set() };
  try {
    await pool(sockets, sockets, () => httpDownload(path, conns, payload(0), REQUEST_LIMIT_MS));
  } catch (err) {
    conns.agent.destroy();
    throw err;
  }
  return conns;
}

/** A note when the requests needed more connections than were opened: the path did not keep them alive. */
function keptAliveNote(conns: Connections, opened: number): string | undefined {
  return conns.sockets.size > opened ? `connections were not kept alive: ${conns.sockets.size} for ${opened}` : undefined;
}

/** One timed transfer on a kept-alive connection opened before the clock starts, reported as bulk's are. */
async function measureTransfer(ctx: Context, path: HttpPath, direction: Direction, bytes: number): Promise<Run> {
  const limitMs = ctx.config.transferLimitMs;
  let conns: Connections | undefined;
  try {
    conns = await openConnections(path, 1);
    const meter = cpuMeter(path.pids);
    const t = await (direction === 'download' ? httpDownload : httpUpload)(path, conns, payload(bytes), limitMs);
    const cpu = formatCpu(meter());
    const rate = mbps(t);
    const note = [transferNote(t, bytes, limitMs), keptAliveNote(conns, 1)].filter(Boolean).join('; ') || undefined;
    ctx.info(`${rate.toFixed(1)} MB/s (${t.seconds.toFixed(2)} s); CPU: ${cpu}${note ? `; ${note}` : ''}`);
    return { rate, note, cpu };
  } catch (err) {
    return failedRun(ctx, err);
  } finally {
    conns?.agent.destroy();
  }
}

interface Requests {
  count: number;
  seconds: number;
  latenciesMs: number[];
  connections: Connections;
  cpu: ReturnType<ReturnType<typeof cpuMeter>>;
}

/** `count` GETs of 1 KiB each (each from its own offset, each checked), `concurrency` at a time on as many kept-alive connections. */
async function smallGets(path: HttpPath, count: number, concurrency: number): Promise<Requests> {
  const payloads = Array.from({ length: count }, (_, i) => payload(SMALL_BYTES, i * SMALL_BYTES));
  const connections = await openConnections(path, concurrency);
  try {
    const latenciesMs: number[] = [];
    const meter = cpuMeter(path.pids);
    const start = now();
    await pool(count, concurrency, async (i) => {
      const t = await httpDownload(path, connections, payloads[i], REQUEST_LIMIT_MS);
      if (!t.complete) throw new Error(`a GET of ${SMALL_BYTES} bytes via ${path.label} got ${t.bytes} bytes within ${REQUEST_LIMIT_MS / 1000} s`);
      latenciesMs.push(t.seconds * 1000);
    });
    return { count, seconds: (now() - start) / 1000, latenciesMs, connections, cpu: meter() };
  } finally {
    connections.agent.destroy();
  }
}

async function measureRequests(ctx: Context, path: HttpPath, count: number, concurrency: number): Promise<Run> {
  try {
    const r = await smallGets(path, count, concurrency);
    const rate = r.count / r.seconds;
    const latency = `p50 ${percentile(r.latenciesMs, 50).toFixed(2)} ms, p99 ${percentile(r.latenciesMs, 99).toFixed(2)} ms`;
    const cpu = `${formatCpu(r.cpu)}; per request: ${formatCpuPer(r.cpu, r.count)}`;
    const note = [latency, keptAliveNote(r.connections, concurrency)].filter(Boolean).join('; ');
    ctx.info(`${rate.toFixed(0)} requests/s, ${latency} (${r.count} on ${r.connections.sockets.size} connection${r.connections.sockets.size === 1 ? '' : 's'}); CPU: ${cpu}`);
    return { rate, note, cpu };
  } catch (err) {
    return failedRun(ctx, err);
  }
}

/** One measurement on each path in turn, round after round (config.rounds): every path's runs, by label. */
async function inTurns(ctx: Context, paths: readonly HttpPath[], what: string, detail: string, measure: (path: HttpPath) => Promise<Run>): Promise<Map<string, Run[]>> {
  const runs = new Map<string, Run[]>(paths.map((p) => [p.label, []]));
  for (const round of roundLabels(ctx.config.rounds)) {
    for (const path of paths) {
      ctx.step(`${what} via ${path.label}${round} (${detail})`);
      runs.get(path.label)!.push(await measure(path));
    }
  }
  return runs;
}

/** The median of a path's rounds (a failed round counts lowest), and all of them for the note (as bulk's medianRun, in `unit`). */
function medianRun(runs: Run[], unit: string): Run & { spread: string } {
  const median = medianBy(runs, (r) => r.rate ?? -1);
  const spread = runs.length > 1 ? `median of ${runs.length} rounds: ${runs.map((r) => (r.rate === null ? 'failed' : r.rate.toFixed(unit === 'MB/s' ? 1 : 0))).join(', ')} ${unit}` : '';
  return { ...median, spread };
}

/** Records each path's median round, the tunnel's paths against direct. */
function recordRuns(ctx: Context, runs: Map<string, Run[]>, figure: string, unit: string, key: string, target: boolean): void {
  let direct: number | null = null;
  for (const label of PATHS) {
    const { rate, note, cpu, spread } = medianRun(runs.get(label)!, unit);
    const isTunnel = label !== DIRECT;
    if (!isTunnel) direct = rate;
    ctx.record({
      figure: `${figure} via ${label}`,
      value: rate,
      unit,
      baseline: isTunnel ? { label: DIRECT, value: direct } : undefined,
      target: isTunnel && target ? { on: 'ratio', op: '>=', limit: RATIO_TARGET } : undefined,
      note: [spread, note, isTunnel && cpu ? `CPU (100% = one core): ${cpu}` : ''].filter(Boolean).join('; ') || undefined,
    });
    if (rate !== null) ctx.shared.set(`push.${key}.${label}`, rate);
  }
}

export const push: Scenario = {
  name: 'push',
  title: 'push mode: reverse-proxy port and push listener to a hub service',
  plan: (config) => [START, 'warm up every path',
    ...DIRECTIONS.flatMap((d) => roundLabels(config.rounds).flatMap((r) => PATHS.map((p) => `${d} via ${p}${r}`))),
    ...[1, CONCURRENCY].flatMap((c) => roundLabels(config.rounds).flatMap((r) => PATHS.map((p) => `${c} at a time via ${p}${r}`)))],

  async run(ctx: Context) {
    const { config, scope } = ctx;
    const size = sizes(config);
    ctx.step(START);
    const hub = await startHubService(scope);
    const ws = await startWorkspace(scope);
    const server = await startTunnelServer(scope, ws, ['--reverse-proxy-port=0', `--norm-upstream=http://127.0.0.1:${hub.port}`]);
    const proxyPort = Number((await server.proc.waitFor(/service=reverse-proxy address=\S+:(\d+)/, 30_000))[1]);
    const agent = await startTunnelAgent(scope, ws, server.agentPort, ['--push-listen=127.0.0.1:0=norm']);
    const pushPort = Number((await agent.proc.waitFor(/service=push address=\S+:(\d+) route=norm\b/, 30_000))[1]);
    await agent.proc.waitFor(/connected to tunnel server.* push=on/, 30_000);
    // An add-on of the cluster on the reverse-proxy port: the local PKI's agent certificate of the cluster.
    const certificate = await localAgentCertificate(ws.dir, CLUSTER);
    const tlsOptions = { ca: readFileSync(ws.pki.caCert), cert: readFileSync(certificate.cert), key: readFileSync(certificate.key) };
    ctx.info(`hub service 127.0.0.1:${hub.port}, reverse-proxy port 127.0.0.1:${proxyPort} (route /v1/norm), push listener 127.0.0.1:${pushPort} (route norm)`);

    const plain = (label: string, port: number, pids: Record<string, number>): HttpPath => ({
      label, port, pids, prefix: '',
      agent: (sockets) => new http.Agent({ keepAlive: true, maxSockets: sockets }),
      request: (options, onResponse) => http.request(options, onResponse),
    });
    const paths: HttpPath[] = [
      plain(DIRECT, hub.port, { client: process.pid, hub: hub.pid }),
      {
        label: PROXY, port: proxyPort, prefix: '/v1/norm',
        pids: { client: process.pid, server: server.pid, hub: hub.pid },
        agent: (sockets) => new https.Agent({ keepAlive: true, maxSockets: sockets, ...tlsOptions }),
        request: (options, onResponse) => https.request(options, onResponse),
      },
      plain(PUSH, pushPort, { client: process.pid, agent: agent.pid, server: server.pid, hub: hub.pid }),
    ];

    ctx.step(`warm up every path (${formatBytes(size.warmupBytes)} each way, ${size.warmupRequests} small GETs)`);
    for (const path of paths) {
      for (const direction of DIRECTIONS) {
        const conns = await openConnections(path, 1);
        try {
          await (direction === 'download' ? httpDownload : httpUpload)(path, conns, payload(size.warmupBytes), config.transferLimitMs);
        } finally {
          conns.agent.destroy();
        }
      }
      await smallGets(path, size.warmupRequests, CONCURRENCY);
    }

    for (const direction of DIRECTIONS) {
      const runs = await inTurns(ctx, paths, direction, formatBytes(size.bytes), (path) => measureTransfer(ctx, path, direction, size.bytes));
      recordRuns(ctx, runs, direction, 'MB/s', direction, true);
    }
    for (const concurrency of [1, CONCURRENCY]) {
      const count = size.requests[concurrency];
      const runs = await inTurns(ctx, paths, `${concurrency} at a time`, `${count} GETs of ${formatBytes(SMALL_BYTES)}`, (path) => measureRequests(ctx, path, count, concurrency));
      recordRuns(ctx, runs, `${formatBytes(SMALL_BYTES)} GETs, ${concurrency} at a time`, 'req/s', `requests.${concurrency}`, false);
    }
  },
};

// Run as the hub service's process (startHubService): serve until the bench goes away.
if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv.includes(SERVE_FLAG)) await serve(hubService());
