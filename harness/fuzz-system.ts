/**
 * Hostile peers against a real tunnel-server binary: an in-process gRPC frontend client
 * (ProxyService on the unix socket) and an in-process agent (AgentService, mTLS with an
 * agent certificate of its own cluster) write arbitrary packets, stray, duplicated,
 * reordered, truncated and malformed, and arbitrary stream metadata, while a legitimate
 * transfer runs through the same server to a real agent. The server must stay up, the
 * transfer's bytes (length and sha256) must arrive intact, and once the hostile peers are
 * gone the server's gauges must show no connection, dial or stream left behind.
 */
import fc from 'fast-check';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { join } from 'node:path';
import { once } from 'node:events';
import { metric, run, workspace, type Proc, type Workspace } from './processes.js';
import { connect } from '../lib/transport/grpc-client.js';
import { framePacket } from '../lib/transport/grpc-stream.js';
import { localAgentCertificate } from '../lib/pki/local-pki.js';
import { AGENT_CONNECT_PATH, PROXY_PATH } from '../lib/wire/protocol.js';
import { PacketType, type KnownPacket } from '../lib/wire/packet.js';
import { checkParameters, int64, type FuzzProperty } from './fuzz-properties.js';

const SERVER_METRIC = 'konnectivity_network_proxy_server';
const HOSTILE_CLUSTER = 'cluster-x';

export interface HostileSystem {
  ws: Workspace;
  server: Proc;
  agent: Proc;
  healthPort: number;
  agentPort: number;
  grpcUds: string;
  connectUds: string;
  echoPort: number;
  stop(): Promise<void>;
}

/** tunnel-server and a tunnel-agent for cluster-a (aliased to 127.0.0.1), and a TCP echo target. */
export async function startHostileSystem(): Promise<HostileSystem> {
  const ws = await workspace();
  const echo = net.createServer((s) => {
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  echo.listen(0, '127.0.0.1');
  await once(echo, 'listening');
  const grpcUds = join(ws.dir, 'grpc.sock');
  const connectUds = join(ws.dir, 'connect.sock');
  const server = run('tunnel-server', [
    `--state-dir=${ws.dir}`, '--bind-address=127.0.0.1', '--health-bind-address=127.0.0.1', '--agent-port=0', '--server-port=0',
    '--health-port=0', `--uds-name=${grpcUds}`, `--http-connect-uds=${connectUds}`, '--reverse-proxy-port=0',
  ]);
  const port = async (service: string) => Number((await server.waitFor(new RegExp(`service=${service} address=\\S+:(\\d+)`)))[1]);
  await server.waitFor(/tunnel server started/);
  const agentPort = await port('agent');
  const healthPort = await port('health');
  const agent = run('tunnel-agent', [
    `--state-dir=${ws.dir}`, '--cluster-name=cluster-a', `--tunnelserver-addr=127.0.0.1:${agentPort}`,
    '--health-bind-address=127.0.0.1', '--health-port=0', '--host-alias=cluster-a=127.0.0.1',
  ]);
  await agent.waitFor(/connected to tunnel server/);
  return {
    ws, server, agent, healthPort, agentPort, grpcUds, connectUds,
    echoPort: (echo.address() as net.AddressInfo).port,
    stop: async () => {
      await agent.stop();
      await server.stop();
      await new Promise((resolve) => echo.close(resolve));
      ws.cleanup();
    },
  };
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** A legitimate transfer: CONNECT through the server's unix socket to the echo target behind cluster-a; resolves when all of it came back intact. */
async function legitimateTransfer(system: HostileSystem, payload: Buffer): Promise<void> {
  const socket = net.connect(system.connectUds);
  try {
    await once(socket, 'connect');
    socket.write(`CONNECT cluster-a:${system.echoPort} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
    const head = await new Promise<Buffer>((resolve, reject) => {
      let got = Buffer.alloc(0);
      const onData = (chunk: Buffer) => {
        got = Buffer.concat([got, chunk]);
        if (got.indexOf('\r\n\r\n') < 0) return;
        socket.off('data', onData);
        socket.off('close', onClose);
        resolve(got);
      };
      const onClose = () => reject(new Error(`the legitimate CONNECT was closed before its response head: ${JSON.stringify(got.toString('latin1'))}`));
      socket.on('data', onData);
      socket.once('close', onClose);
    });
    const status = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
    if (!/^HTTP\/1\.1 200 /.test(status)) throw new Error(`the legitimate CONNECT got ${status}`);
    const hash = createHash('sha256');
    let received = 0;
    const done = new Promise<void>((resolve, reject) => {
      socket.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        received += chunk.length;
        if (received >= payload.length) resolve();
      });
      socket.once('close', () => reject(new Error(`the legitimate transfer closed after ${received} of ${payload.length} bytes`)));
    });
    socket.write(payload);
    await done;
    if (received !== payload.length || hash.digest('hex') !== sha256(payload)) throw new Error(`the legitimate transfer came back as ${received} other bytes (sent ${payload.length})`);
  } finally {
    socket.destroy();
  }
}

/** One thing a hostile peer writes on its stream. */
export type Step =
  | { kind: 'packet'; packet: KnownPacket; times: number }
  | { kind: 'unknown-type'; type: number }
  | { kind: 'garbage'; bytes: Uint8Array }
  | { kind: 'compressed' }
  | { kind: 'oversized' }
  | { kind: 'pause' };

/** Ids from a small set, so that strays hit live connections and dials as well as unknown ones. */
const id = (): fc.Arbitrary<bigint> => fc.oneof({ weight: 4, arbitrary: fc.bigInt({ min: 0n, max: 4n }) }, { weight: 1, arbitrary: int64() });

const hostilePacket = (cluster: string, echoPort: number): fc.Arbitrary<KnownPacket> => fc.oneof(
  fc.record({ type: fc.constant(PacketType.DIAL_REQ), protocol: fc.constantFrom('tcp', '', 'udp'), address: fc.constantFrom(`${cluster}:${echoPort}`, 'cluster-a:1', 'nowhere:1', `${HOSTILE_CLUSTER}:1`, '', 'x'), random: id() }),
  fc.record({ type: fc.constant(PacketType.DIAL_RSP), error: fc.constantFrom('', 'refused'), connectID: id(), random: id() }),
  fc.record({ type: fc.constant(PacketType.CLOSE_REQ), connectID: id() }),
  fc.record({ type: fc.constant(PacketType.CLOSE_RSP), error: fc.constantFrom('', 'unknown'), connectID: id() }),
  fc.record({ type: fc.constant(PacketType.DATA), connectID: id(), data: fc.integer({ min: 0, max: 70_000 }).map((n) => Buffer.alloc(n, 0x41)) }),
  fc.record({ type: fc.constant(PacketType.DIAL_CLS), random: id() }),
  fc.constant({ type: PacketType.DRAIN }),
  fc.record({ type: fc.constant(PacketType.WINDOW_UPDATE), connectID: id(), bytes: int64() }),
);

const step = (cluster: string, echoPort: number): fc.Arbitrary<Step> => fc.oneof(
  { weight: 12, arbitrary: fc.record({ kind: fc.constant('packet' as const), packet: hostilePacket(cluster, echoPort), times: fc.constantFrom(1, 1, 1, 2, 3) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('unknown-type' as const), type: fc.integer({ min: 7, max: 1000 }).filter((t) => t !== 64) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('garbage' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 40 }) }) },
  { weight: 2, arbitrary: fc.constant({ kind: 'pause' as const }) },
  { weight: 1, arbitrary: fc.constantFrom({ kind: 'compressed' as const }, { kind: 'oversized' as const }) },
);

/** How a hostile stream ends: cleanly, cut inside a message, reset, or by dropping the connection. */
export type Ending = 'end' | 'truncate' | 'reset' | 'drop';

export interface Script {
  frontend: { steps: Step[]; ending: Ending } | undefined;
  agent: { steps: Step[]; ending: Ending; metadata: Record<string, string> } | undefined;
}

/** The bytes of a step as gRPC messages: one frame per message; `message` says where each starts. */
function stepBytes(s: Step): Buffer[] {
  switch (s.kind) {
    case 'packet':
      return Array.from({ length: s.times }, () => Buffer.concat(framePacket(s.packet)));
    case 'unknown-type': {
      const body = Buffer.from([0x08, ...varint(s.type)]);
      return [Buffer.concat([prefix(body.length), body])];
    }
    case 'garbage':
      return [Buffer.concat([prefix(s.bytes.length), s.bytes])];
    case 'compressed':
      return [Buffer.from([1, 0, 0, 0, 2, 0x08, 0x04])];
    case 'oversized':
      return [Buffer.from([0, 0x7f, 0xff, 0xff, 0xff, 0x08])];
    case 'pause':
      return [];
  }
}

function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

function prefix(length: number): Buffer {
  const p = Buffer.alloc(5);
  p.writeUInt32BE(length, 1);
  return p;
}

/** Writes a script's steps on a raw HTTP/2 stream, answering nothing, then ends it the script's way. */
async function playOn(h2: http2.ClientHttp2Stream, session: http2.ClientHttp2Session, steps: readonly Step[], ending: Ending): Promise<void> {
  h2.on('error', () => undefined);
  h2.on('data', () => undefined);
  let last: Buffer | undefined;
  for (const s of steps) {
    if (h2.destroyed || h2.closed) return;
    if (s.kind === 'pause') {
      await new Promise((resolve) => setTimeout(resolve, 20));
      continue;
    }
    for (const frame of stepBytes(s)) {
      last = frame;
      if (h2.write(frame)) continue;
      // A server that refused or ended the call reads no more: the peer gives up and ends its way.
      const drained = await Promise.race([once(h2, 'drain').then(() => true), once(h2, 'close').then(() => true), new Promise<boolean>((r) => setTimeout(r, STALL_MS, false))]);
      if (!drained) break;
    }
  }
  if (h2.destroyed || h2.closed) return;
  switch (ending) {
    case 'end':
      h2.end();
      break;
    case 'truncate':
      h2.end((last ?? Buffer.concat(framePacket({ type: PacketType.DRAIN }))).subarray(0, 3));
      break;
    case 'reset':
      h2.close(http2.constants.NGHTTP2_CANCEL);
      break;
    case 'drop':
      session.destroy();
      break;
  }
  await new Promise((resolve) => setTimeout(resolve, 20));
}

/** How long a hostile peer waits for window before it stops writing. */
const STALL_MS = 2_000;

const GRPC_HEADERS = { ':method': 'POST', 'content-type': 'application/grpc', te: 'trailers', 'grpc-accept-encoding': 'identity' };

async function hostileFrontend(system: HostileSystem, steps: readonly Step[], ending: Ending): Promise<void> {
  const session = await connect({ target: { uds: system.grpcUds }, timeoutMs: 5_000 });
  try {
    await playOn(session.request({ ...GRPC_HEADERS, ':path': PROXY_PATH }), session, steps, ending);
  } finally {
    session.destroy();
  }
}

async function hostileAgent(system: HostileSystem, steps: readonly Step[], ending: Ending, metadata: Record<string, string>): Promise<void> {
  const paths = await localAgentCertificate(system.ws.dir, HOSTILE_CLUSTER);
  const tls = { ca: readFileSync(system.ws.pki.caCert), cert: readFileSync(paths.cert), key: readFileSync(paths.key) };
  const session = await connect({ target: `127.0.0.1:${system.agentPort}`, tls, serverName: 'localhost', timeoutMs: 5_000 });
  try {
    await playOn(session.request({ ...GRPC_HEADERS, ':path': AGENT_CONNECT_PATH, ...metadata }), session, steps, ending);
  } finally {
    session.destroy();
  }
}

/** Metadata an agent might send: the expected keys with odd values, repeated or missing, and the extensions' keys with bogus tokens. */
const agentMetadata = (): fc.Arbitrary<Record<string, string>> => fc.oneof(
  { weight: 3, arbitrary: fc.record({
    agentid: fc.constant('hostile-agent'),
    agentidentifiers: fc.constant(`host=${HOSTILE_CLUSTER}`),
    'tke-flow-control': fc.constantFrom('window=65536', 'window=16384', 'window=0', 'window=99999999999999999999', 'window=-1', 'x'),
  }, { requiredKeys: ['agentid', 'agentidentifiers'] }) },
  { weight: 1, arbitrary: anyAgentMetadata() },
);

const anyAgentMetadata = (): fc.Arbitrary<Record<string, string>> => fc.record({
  agentid: fc.oneof(fc.constant('hostile-agent'), fc.constant(''), fc.stringMatching(/^[\x20-\x7e]{0,30}$/)),
  agentidentifiers: fc.oneof(fc.constant(`host=${HOSTILE_CLUSTER}`), fc.constant('host=cluster-a'), fc.constant('default-route=true'), fc.stringMatching(/^[\x20-\x7e]{0,30}$/)),
  'tke-flow-control': fc.oneof(fc.constant('window=65536'), fc.constant('window=0'), fc.constant('window=99999999999999999999'), fc.stringMatching(/^[\x20-\x7e]{0,20}$/)),
  'tke-split-streams': fc.constantFrom('1', '0', 'x'),
  'tke-push': fc.constantFrom('1', '0'),
  'tke-downlink-for': fc.stringMatching(/^[0-9a-f]{0,32}$/),
  'tke-push-for': fc.stringMatching(/^[0-9a-f]{0,32}$/),
}, { requiredKeys: ['agentid'] });

/** The server's gauges once the hostile peers are gone: nothing of theirs may be left. */
async function settled(system: HostileSystem, settleMs: number): Promise<string | undefined> {
  const gauges = ['established_connections', 'grpc_frontend_streams', 'agent_streams', 'ready_backends', 'pending_backend_dials', 'buffered_bytes', 'push_streams'];
  const expected: Record<string, number> = { established_connections: 0, grpc_frontend_streams: 0, agent_streams: 1, ready_backends: 1, pending_backend_dials: 0, buffered_bytes: 0, push_streams: 0 };
  const deadline = Date.now() + settleMs;
  for (;;) {
    const values: Record<string, number> = {};
    for (const g of gauges) values[g] = await metric(system.healthPort, `${SERVER_METRIC}_${g}`);
    const off = gauges.filter((g) => values[g] !== expected[g]);
    if (off.length === 0) return undefined;
    if (Date.now() > deadline) return `left behind: ${off.map((g) => `${g}=${values[g]} (expected ${expected[g]})`).join(', ')}`;
    await new Promise((r) => setTimeout(r, 100));
  }
}

class StepTimeout extends Error {}

/** A part of a case that takes longer than any should (a hang) fails the case, naming the part. */
function within<T>(promise: Promise<T>, what: string, ms = 30_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StepTimeout(`${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** How long the server may take to let go of a hostile peer's streams once the peer is gone. */
export const PROMPT_CLEANUP_MS = 15_000;
/**
 * The most it can take: a connection whose loss the server did not notice is closed by its
 * keepalive (a ping every 30 s, 15 s for the answer).
 */
export const KEEPALIVE_CLEANUP_MS = 50_000;

/**
 * One case: the hostile peers of `s` play while a legitimate transfer of `transferBytes`
 * runs; throws what went wrong (a hang, the server gone, bytes lost, something left behind).
 */
export async function playHostileCase(system: HostileSystem, s: Script, settleMs = PROMPT_CLEANUP_MS, transferBytes = 2 * 1024 * 1024): Promise<void> {
  const payload = randomBytes(transferBytes);
  const results = await Promise.allSettled([
    within(legitimateTransfer(system, payload), 'the legitimate transfer'),
    s.frontend ? within(hostileFrontend(system, s.frontend.steps, s.frontend.ending), 'the hostile frontend client') : Promise.resolve(),
    s.agent ? within(hostileAgent(system, s.agent.steps, s.agent.ending, s.agent.metadata), 'the hostile agent') : Promise.resolve(),
  ]);
  for (const r of results.slice(1)) if (r.status === 'rejected' && r.reason instanceof StepTimeout) throw r.reason;
  if (system.server.child.exitCode !== null || system.server.child.signalCode !== null) throw new Error(`tunnel-server exited:\n${system.server.output.slice(-4000)}`);
  if (results[0].status === 'rejected') throw results[0].reason as Error;
  const left = await settled(system, settleMs);
  if (left) throw new Error(left);
}

/**
 * The property over a running system (started once by the caller): each case plays a
 * hostile frontend client and a hostile agent while a legitimate transfer of `transferBytes` runs.
 */
export function hostilePeerProperty(getSystem: () => HostileSystem, runs: number, settleMs = PROMPT_CLEANUP_MS, transferBytes = 2 * 1024 * 1024): FuzzProperty {
  const name = 'hostile peers: a real tunnel-server stays up, a legitimate transfer through it arrives intact, and nothing of the hostile streams is left';
  return {
    name,
    runs,
    slow: true,
    async check(params) {
      const system = getSystem();
      const script = (): fc.Arbitrary<Script> => fc.record({
        frontend: fc.option(fc.record({ steps: fc.array(step('cluster-a', system.echoPort), { maxLength: 25 }), ending: fc.constantFrom<Ending>('end', 'truncate', 'reset', 'drop') }), { nil: undefined }),
        agent: fc.option(fc.record({ steps: fc.array(step(HOSTILE_CLUSTER, 1), { maxLength: 25 }), ending: fc.constantFrom<Ending>('end', 'truncate', 'reset', 'drop'), metadata: agentMetadata() }), { nil: undefined }),
      });
      const details = await fc.check(fc.asyncProperty(script(), (s) => playHostileCase(system, s, settleMs, transferBytes)), checkParameters(params) as fc.Parameters<[Script]>);
      return { name, failed: details.failed, numRuns: details.numRuns, seed: details.seed, report: fc.defaultReportMessage(details) ?? '' };
    },
  };
}
