/**
 * Chaos: one server, one agent (cluster c1), two echo targets and three clients (HTTP-CONNECT
 * on the unix socket and over mTLS, a GrpcChannel on the gRPC socket), each a process
 * of its own. For CHAOS_MS, every DWELL_MS one of them in turn (agent, server, a target, a
 * client) is killed with SIGKILL in the middle of transfers and started again, the server on
 * the same ports so that the agent finds it. Dials that fail while something is down are
 * expected; every transfer a client saw complete must have come back intact (length and
 * sha256), and transfers must complete again after each kill. At the end the clients finish
 * what they have under way (on SIGTERM), so that a connection that hung is reported too.
 *
 * Afterwards, with the clients gone, the surviving server and agent hold no connection, and
 * no more file descriptors and event-loop resources (sockets, referenced timers) than the
 * first pair held idle before any client came. Then one more burst of transfers goes through
 * them, and all of it must be back where it was, with resident memory bounded: what the chaos
 * left behind shows in the tables and against the fresh pair, what a transfer leaves behind
 * in the growth over the burst.
 */
import test from 'ava';
import { readdirSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TransferOutcome } from '../harness/chaos-client.js';
import type { AgentConnectionsReply, ServerConnectionsReply } from '../lib/observe/admin.js';
import { ROOT } from './helpers/paths.js';
import {
  run, startAgent, startServer, unusedPort, workspace,
  type AgentHandle, type Proc, type ServerHandle, type Workspace,
} from './helpers/system.js';

/** How long processes are killed in turn: several rounds of each kind of victim. */
const CHAOS_MS = 22_000;
/** Between one victim's recovery and the next kill: the system under load, whole. */
const DWELL_MS = 1_500;
/** How long a restarted process and the transfers through it may take to be back. */
const RECOVERY_MS = 15_000;
/** How long the tables may take to empty once the clients are gone. */
const SETTLE_MS = 10_000;
const CLIENT_PARALLEL = 3;
/** Up to 4 MiB per transfer while killing, so that kills land inside long transfers too. */
const CHAOS_MAX_BYTES = 4 * 1024 * 1024;
/** Transfers per client of the final burst. */
const BURST = 150;
const BURST_MS = 60_000;
/** How long a client may take to finish what it has under way: longer than its stall bound (10 s). */
const STOP_MS = 20_000;
/** What an idle process may hold more of after the burst than before it: a keep-alive scrape, a timer on its way out. */
const FD_SLACK = 3;
const RESOURCE_SLACK = 2;
const MiB = 1024 * 1024;

const SERVER = 'konnectivity_network_proxy_server';
const AGENT = 'konnectivity_network_proxy_agent';
const HARNESS = join(ROOT, 'dist', 'harness');

// ---- reading the processes -----------------------------------------------------------------

/** GET on a health port, without keep-alive, so that no scrape holds a descriptor of the process afterwards. */
function get(port: number, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, timeout: 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => { body += chunk; });
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`GET ${path} on port ${port} answered ${res.statusCode}: ${body}`))));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${path} on port ${port}: no answer within 5000 ms`)));
    req.on('error', reject);
  });
}

/** Every sample of a /metrics page, by series name with its labels (`name{type="Timeout"}`). */
async function scrape(port: number): Promise<Map<string, number>> {
  const samples = new Map<string, number>();
  for (const line of (await get(port, '/metrics')).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return samples;
}

function fdCount(proc: Proc): number {
  return readdirSync(`/proc/${proc.child.pid}/fd`).length;
}

const isRunning = (proc: Proc) => proc.child.exitCode === null && proc.child.signalCode === null;

/** Polls `problems` until it finds none; throws with the last ones it found after timeoutMs. */
async function settled(problems: () => Promise<string[]>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = await problems().catch((err: Error) => [`cannot tell: ${err.message}`]);
    if (found.length === 0) return;
    if (Date.now() > deadline) throw new Error(`expected ${what} within ${timeoutMs} ms; still: ${found.join('; ')}`);
    await sleep(100);
  }
}

/** `promise`, or a rejection naming `what` after timeoutMs. */
function within<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`expected ${what} within ${timeoutMs} ms`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ---- the system ----------------------------------------------------------------------------

interface TargetProcess {
  port: number;
  proc: Proc;
  /** Descriptors it holds idle, right after it started. */
  idleFds: number;
}

interface Client {
  label: string;
  via: 'unix' | 'tls' | 'grpc';
  /** Its flags beyond where to dial, for a replacement to start alike. */
  extra: string[];
  proc: Proc;
}

type Outcome = TransferOutcome & { client: string };

/** The clients: HTTP-CONNECT on the unix socket and over mTLS, and a GrpcChannel on the gRPC unix socket. */
const VIAS: Array<Client['via']> = ['unix', 'tls', 'grpc'];

let ws: Workspace;
let agentPort: number;
let connectPort: number;
let server: ServerHandle;
let agent: AgentHandle;
const targets: TargetProcess[] = [];
/** The clients of the kill loop that are still running. */
const clients: Client[] = [];
/** What every client printed, whole lines that parse. */
const outcomes: Outcome[] = [];
/** Lines of client output that are not an outcome: a client that failed in itself. */
const unreadable: string[] = [];
/** Every process started, to kill after the file. */
const started: Proc[] = [];
let clientsStarted = 0;
/** The first server and agent, idle and connected, before any client: what a fresh pair holds. */
let fresh: { server: Footprint; agent: Footprint };

function track(proc: Proc): Proc {
  started.push(proc);
  return proc;
}

const serverFlags = () => [`--agent-port=${agentPort}`, `--server-port=${connectPort}`];

async function startTarget(port: number): Promise<TargetProcess> {
  const proc = track(run(join(HARNESS, 'echo-target.js'), [String(port)]));
  await proc.waitFor(/echo target ready/);
  return { port, proc, idleFds: fdCount(proc) };
}

/** A chaos client through the unix socket or the mTLS port, its outcomes collected as they come. */
function startClient(via: Client['via'], extra: string[] = []): Client {
  const label = `client-${++clientsStarted}-${via}`;
  const proxy = {
    unix: [`--proxy=unix:${server.connectUds}`],
    tls: [`--proxy=127.0.0.1:${connectPort}`, `--ca=${ws.pki.caCert}`, `--cert=${ws.pki.clientCert}`, `--key=${ws.pki.clientKey}`],
    grpc: [`--proxy=grpc:${server.grpcUds}`],
  }[via];
  const proc = track(run(join(HARNESS, 'chaos-client.js'), [
    ...proxy, `--targets=${targets.map((target) => `c1:${target.port}`).join(',')}`, `--parallel=${CLIENT_PARALLEL}`, ...extra,
  ]));
  let partial = '';
  proc.child.stdout?.on('data', (data: Buffer) => {
    const lines = (partial + data.toString()).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines.filter(Boolean)) {
      try {
        outcomes.push({ ...(JSON.parse(line) as TransferOutcome), client: label });
      } catch {
        unreadable.push(`${label}: ${line}`);
      }
    }
  });
  return { label, via, extra, proc };
}

const completedBetween = (from: number, to = Infinity) => outcomes.filter((o) => o.completed && o.at >= from && o.at < to).length;

/** Whose turn it is among the targets. */
const rounds = { target: 0 };

/** Each kind of victim: kill it with SIGKILL and start it again; resolves once it is back. */
const victims = {
  async agent(): Promise<string> {
    await agent.proc.stop('SIGKILL');
    agent = await startAgent(ws, { agentPort }, 'c1');
    track(agent.proc);
    return 'agent';
  },
  async server(): Promise<string> {
    await server.proc.stop('SIGKILL');
    server = await startServer(ws, serverFlags());
    track(server.proc);
    await settled(async () => {
      const agents = (await scrape(server.healthPort)).get(`${SERVER}_ready_backends`);
      return agents === 1 ? [] : [`the server has ${agents} agents`];
    }, RECOVERY_MS, 'the agent to connect to the restarted server');
    return 'server';
  },
  async target(): Promise<string> {
    const i = rounds.target++ % targets.length;
    await targets[i].proc.stop('SIGKILL');
    targets[i] = await startTarget(targets[i].port);
    return `target c1:${targets[i].port}`;
  },
  async client(): Promise<string> {
    // The one running longest: the kinds of client take turns.
    const victim = clients.shift()!;
    await victim.proc.stop('SIGKILL');
    clients.push(startClient(victim.via, victim.extra));
    return victim.label;
  },
};
type Victim = keyof typeof victims;

/** Throws if a process that nobody killed exited: a crash is a failure of its own. */
function assertNothingElseDied(): void {
  const expected = [
    { label: 'server', proc: server.proc }, { label: 'agent', proc: agent.proc },
    ...targets.map((target) => ({ label: `target c1:${target.port}`, proc: target.proc })),
    ...clients,
  ];
  for (const { label, proc } of expected) {
    if (!isRunning(proc)) {
      throw new Error(`${label} exited on its own (code ${proc.child.exitCode}, signal ${proc.child.signalCode}); its output ends:\n${proc.output.slice(-3000)}`);
    }
  }
}

/** What still holds a connection: gauges above 0 and admin lists that are not empty, on the server and the agent. */
async function connectionTables(): Promise<string[]> {
  const problems: string[] = [];
  const serverSeries = await scrape(server.healthPort);
  const agentSeries = await scrape(agent.healthPort);
  const expect = (who: string, series: Map<string, number>, name: string, wanted: number) => {
    const value = series.get(name);
    if (value !== wanted) problems.push(`${who} ${name.replace(/^konnectivity_network_proxy_\w+?_/, '')} is ${value ?? 'missing'}, not ${wanted}`);
  };
  for (const name of ['established_connections', 'pending_backend_dials', 'grpc_frontend_streams', 'http_connections', 'buffered_bytes']) {
    expect('server', serverSeries, `${SERVER}_${name}`, 0);
  }
  expect('server', serverSeries, `${SERVER}_agent_streams`, 1);
  for (const name of ['open_endpoint_connections', 'buffered_bytes']) expect('agent', agentSeries, `${AGENT}_${name}`, 0);
  expect('agent', agentSeries, `${AGENT}_open_server_connections`, 1);
  const serverList = JSON.parse(await get(server.healthPort, '/debug/connections')) as ServerConnectionsReply;
  if (serverList.connections.total !== 0) {
    problems.push(`server /debug/connections lists ${serverList.connections.total}, the first ${JSON.stringify(serverList.connections.items[0])}`);
  }
  const agentList = JSON.parse(await get(agent.healthPort, '/debug/connections')) as AgentConnectionsReply;
  if (agentList.connections.total !== 0) {
    problems.push(`agent /debug/connections lists ${agentList.connections.total}, the first ${JSON.stringify(agentList.connections.items[0])}`);
  }
  return problems;
}

/** Targets holding more descriptors than when they started idle: connections from the agent left open. */
async function targetDescriptors(): Promise<string[]> {
  return targets
    .map((target) => ({ target, fds: fdCount(target.proc) }))
    .filter(({ target, fds }) => fds > target.idleFds)
    .map(({ target, fds }) => `target c1:${target.port} holds ${fds} descriptors, ${target.idleFds} when it started`);
}

interface Footprint {
  fds: number;
  /** nodejs_active_resources by type: TCPSocketWrap, PipeWrap, Timeout (referenced timers) ... */
  resources: Map<string, number>;
  rss: number;
}

async function footprint(proc: Proc, healthPort: number): Promise<Footprint> {
  // Descriptors first: the scrape holds one of its own while it runs.
  const fds = fdCount(proc);
  const series = await scrape(healthPort);
  const resources = new Map<string, number>();
  for (const [name, value] of series) {
    const type = /^nodejs_active_resources\{type="(\w+)"\}$/.exec(name)?.[1];
    if (type) resources.set(type, value);
  }
  return { fds, resources, rss: series.get('process_resident_memory_bytes') ?? NaN };
}

/** What a process holds more of than `before` (taken `when`), beyond the slack an idle process may have. */
function growth(who: string, before: Footprint, now: Footprint, when: string): string[] {
  const problems: string[] = [];
  if (now.fds > before.fds + FD_SLACK) problems.push(`${who} holds ${now.fds} file descriptors, ${before.fds} ${when}`);
  for (const [type, count] of now.resources) {
    const was = before.resources.get(type) ?? 0;
    if (count > was + RESOURCE_SLACK) problems.push(`${who} has ${count} active ${type}, ${was} ${when}`);
  }
  return problems;
}

/** The server and the agent, idle, as they are now. */
async function footprints(): Promise<{ server: Footprint; agent: Footprint }> {
  return { server: await footprint(server.proc, server.healthPort), agent: await footprint(agent.proc, agent.healthPort) };
}

test.before(async () => {
  ws = await workspace();
  agentPort = await unusedPort();
  connectPort = await unusedPort();
  for (let i = 0; i < 2; i++) targets.push(await startTarget(await unusedPort()));
  server = await startServer(ws, serverFlags());
  track(server.proc);
  agent = await startAgent(ws, server, 'c1');
  track(agent.proc);
  fresh = await footprints();
  clients.push(...VIAS.map((via) => startClient(via, [`--max-bytes=${CHAOS_MAX_BYTES}`])));
});

test.after.always(async () => {
  await Promise.all(started.map((proc) => proc.stop('SIGKILL')));
  ws?.cleanup();
});

// ---- the tests -----------------------------------------------------------------------------

test.serial('kill -9 of the agent, the server, a target and a client in turn: every completed transfer is intact, and transfers complete again after each kill', async (t) => {
  t.timeout(CHAOS_MS + STOP_MS + 60_000);
  const kinds = Object.keys(victims) as Victim[];
  const kills: Array<{ kind: Victim; victim: string; killedAt: number; backAt: number }> = [];
  const begin = Date.now();
  for (let round = 0; round < kinds.length || Date.now() - begin < CHAOS_MS; round++) {
    await sleep(DWELL_MS);
    assertNothingElseDied();
    const kind = kinds[round % kinds.length];
    const killedAt = Date.now();
    const victim = await victims[kind]();
    const backAt = Date.now();
    await settled(async () => (completedBetween(backAt) > 0 ? [] : [`no transfer completed since ${victim} is back`]), RECOVERY_MS,
      `a transfer to complete after ${victim} was killed and started again`);
    kills.push({ kind, victim, killedAt, backAt });
  }
  assertNothingElseDied();
  const end = Date.now();
  // The clients finish the transfers under way, so that each one's outcome is in, a hung one's too.
  for (const client of clients.splice(0)) {
    await client.proc.waitFor(/chaos client running/, RECOVERY_MS);
    client.proc.child.kill('SIGTERM');
    const code = await within(client.proc.exited, STOP_MS, `${client.label} to finish its transfers under way and exit on SIGTERM`);
    t.is(code, 0, `${client.label} exits 0 on SIGTERM; its output ends:\n${client.proc.output.slice(-2000)}`);
  }

  const completed = outcomes.filter((o) => o.completed);
  const broken = completed.filter((o) => !o.intact);
  const stalled = outcomes.filter((o) => o.failed === 'stall');
  const failed = (why: TransferOutcome['failed']) => outcomes.filter((o) => o.failed === why).length;
  const recovered = kills.map((k, i) => `${k.victim} at ${((k.killedAt - begin) / 1000).toFixed(1)} s, back after ${k.backAt - k.killedAt} ms, then ${completedBetween(k.backAt, kills[i + 1]?.killedAt ?? end)} completed`);
  t.log(`${kills.length} kills in ${((end - begin) / 1000).toFixed(1)} s:\n  ${recovered.join('\n  ')}`);
  t.log(`${outcomes.length} attempts: ${completed.length} completed (${(completed.reduce((n, o) => n + o.bytes, 0) / MiB).toFixed(0)} MiB), ${failed('dial')} dials failed, ${failed('transfer')} transfers cut off, ${stalled.length} stalled`);

  t.deepEqual(new Set(kills.map((k) => k.kind)), new Set(kinds), 'each kind of process was killed');
  for (const via of VIAS) t.true(completed.some((o) => o.client.endsWith(`-${via}`)), `transfers of the ${via} client completed`);
  t.deepEqual(broken.slice(0, 5), [], `${broken.length} of ${completed.length} completed transfers came back with other bytes than were sent (the first 5 shown)`);
  t.deepEqual(stalled.slice(0, 5), [], `${stalled.length} connections neither finished nor closed (the first 5 shown): a connection whose path died must close, not hang`);
  t.deepEqual(unreadable, [], 'the clients printed nothing but outcomes');
});

test.serial('afterwards the connection tables are empty, server and agent hold what a fresh pair holds, and a final burst leaves their descriptors, sockets, timers and memory where they were', async (t) => {
  t.timeout(BURST_MS + 4 * SETTLE_MS);
  // Still running only if the kill loop failed.
  for (const client of clients.splice(0)) await client.proc.stop('SIGKILL');
  await settled(connectionTables, SETTLE_MS, 'every connection table of the server and the agent to be empty once the clients are gone');
  await settled(targetDescriptors, SETTLE_MS, 'the targets to hold no connection once the clients are gone');
  // Whatever they went through, an idle server and agent hold what a fresh pair holds.
  let before = fresh;
  await settled(async () => {
    before = await footprints();
    return [...growth('server', fresh.server, before.server, 'freshly started'), ...growth('agent', fresh.agent, before.agent, 'freshly started')];
  }, SETTLE_MS, 'the server and the agent to hold no more descriptors and event-loop resources after the chaos than a freshly started pair');

  const burst = VIAS.map((via) => startClient(via, [`--transfers=${BURST}`]));
  for (const client of burst) {
    const code = await within(client.proc.exited, BURST_MS, `${client.label} to finish its ${BURST} transfers and exit`);
    t.is(code, 0, `${client.label} exits 0 after its transfers; its output ends:\n${client.proc.output.slice(-2000)}`);
  }
  const results = outcomes.filter((o) => burst.some((client) => client.label === o.client));
  const notIntact = results.filter((o) => !o.intact);
  t.is(results.length, VIAS.length * BURST, 'one outcome per transfer of the final burst');
  t.deepEqual(notIntact.slice(0, 5), [], `${notIntact.length} of ${results.length} transfers of the final burst, with nothing killed, did not come back intact (the first 5 shown)`);

  await settled(connectionTables, SETTLE_MS, 'every connection table of the server and the agent to be empty after the final burst');
  await settled(targetDescriptors, SETTLE_MS, 'the targets to hold no connection after the final burst');
  let after = before;
  await settled(async () => {
    after = await footprints();
    return [...growth('server', before.server, after.server, 'before the burst'), ...growth('agent', before.agent, after.agent, 'before the burst')];
  }, SETTLE_MS, 'the descriptors and event-loop resources of the server and the agent to be back at their baseline after the final burst');
  const summary = (who: 'server' | 'agent') =>
    `${who} ${[fresh, before, after].map((f) => f[who].fds).join('/')} fds, ${[fresh, before, after].map((f) => f[who].resources.get('Timeout') ?? 0).join('/')} timers, ` +
    `${[fresh, before, after].map((f) => (f[who].rss / MiB).toFixed(0)).join('/')} MiB`;
  t.log(`idle when fresh / after the chaos / after the burst: ${summary('server')}; ${summary('agent')}`);

  // Resident memory need not shrink back (the heap keeps room it grew into), but within bounds.
  const bounded = (base: number) => Math.max(2 * base, base + 64 * MiB);
  const mib = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`;
  for (const who of ['server', 'agent'] as const) {
    t.true(before[who].rss <= bounded(fresh[who].rss), `${who} RSS ${mib(before[who].rss)} after the chaos; at most ${mib(bounded(fresh[who].rss))} (2x or +64 MiB of a fresh one's ${mib(fresh[who].rss)})`);
    t.true(after[who].rss <= bounded(before[who].rss), `${who} RSS ${mib(after[who].rss)} after the burst; at most ${mib(bounded(before[who].rss))} (2x or +64 MiB of its ${mib(before[who].rss)} before)`);
  }
  t.true(isRunning(server.proc) && isRunning(agent.proc), 'the server and the agent are still running');
});
