/**
 * 4. memory: many idle tunneled connections (HTTP-CONNECT to an echo target, each proven
 * with one echo, then left open). Server and agent RSS before, with them open, and after they
 * closed and the tunnel's connection gauges are back at 0.
 */
import { startTarget } from '../lib/helpers.js';
import { httpConnectDialer, type Conn } from '../lib/dialers.js';
import { now, ping, pool, sleep, waitUntil, KiB, MiB } from '../lib/measure.js';
import { rssOf, type Rss } from '../lib/rss.js';
import { metric } from '../../harness/processes.js';
import { RECLAIM_LOG_MESSAGE } from '../../lib/observe/memory-reclaim.js';
import { agentMetric, serverMetric, startTunnel, type Tunnel } from '../lib/tunnel.js';
import type { Context, Scenario } from '../lib/scenario.js';

const OPEN_CONCURRENCY = 100;
const WARMUP_CONNECTIONS = 200;
/** File descriptors each process needs beyond the connections (listeners, libs, stdio). */
const FD_HEADROOM = 512;
const SETTLE_MS = 3_000;
/** After closing: the binaries collect their heap once the count stayed down for 6 s. */
const SETTLE_AFTER_CLOSE_MS = 10_000;

/** Where a process's memory is: V8 heap and external (buffers, C++ objects), in MiB. */
export async function heapOf(healthPort: number): Promise<string> {
  try {
    const read = (name: string) => metric(healthPort, name).then((v) => (v / MiB).toFixed(1));
    return `heap ${await read('nodejs_heap_size_used_bytes')}/${await read('nodejs_heap_size_total_bytes')} MiB, external ${await read('nodejs_external_memory_bytes')} MiB`;
  } catch {
    return 'no heap metrics';
  }
}

/** The fields of the last collection a binary logged after its connections closed. */
export function lastReclaim(output: string): string | undefined {
  const line = output.split('\n').filter((l) => l.includes(RECLAIM_LOG_MESSAGE)).at(-1);
  return line && `collected: ${line.slice(line.indexOf(RECLAIM_LOG_MESSAGE) + RECLAIM_LOG_MESSAGE.length).trim()}`;
}

interface Snapshot {
  server: Rss;
  agent: Rss;
  client: number;
}

async function snapshot(tunnel: Tunnel): Promise<Snapshot> {
  return {
    server: await rssOf(tunnel.server.pid, tunnel.server.healthPort),
    agent: await rssOf(tunnel.agent.pid, tunnel.agent.healthPort),
    client: process.memoryUsage().rss,
  };
}

async function gauges(tunnel: Tunnel): Promise<{ server: number; agent: number }> {
  return {
    server: await serverMetric(tunnel.server, 'established_connections'),
    agent: await agentMetric(tunnel.agent, 'open_endpoint_connections'),
  };
}

async function closeAll(conns: Conn[], tunnel: Tunnel, timeoutMs: number): Promise<boolean> {
  for (const c of conns.splice(0)) c.destroy();
  return waitUntil(async () => {
    const g = await gauges(tunnel);
    return g.server === 0 && g.agent === 0;
  }, timeoutMs);
}

export const memory: Scenario = {
  name: 'memory',
  title: 'memory per idle connection',
  plan: (config) => ['start echo target and tunnel', 'warm up', `open ${config.memoryConnections} idle connections`, 'close them and wait for the tunnel to settle'],

  async run(ctx: Context) {
    const { config, scope } = ctx;
    const notes: string[] = [];
    if (process.env.TUNNEL_JEMALLOC) notes.push(`server and agent run with jemalloc preloaded (TUNNEL_JEMALLOC=${process.env.TUNNEL_JEMALLOC})`);
    let count = config.memoryConnections;
    if (config.fdLimit < count + FD_HEADROOM) {
      const reduced = Math.max(100, Math.floor((config.fdLimit - FD_HEADROOM) / 100) * 100);
      notes.push(`open-files limit (ulimit -n) is ${config.fdLimit}, which the tunnel binaries inherit: opened ${reduced} connections instead of ${count}`);
      ctx.info(`ulimit -n is ${config.fdLimit}: too low for ${count} connections, using ${reduced}`);
      count = reduced;
    }

    ctx.step('start echo target and tunnel');
    const target = await startTarget(scope, 'echo target');
    const tunnel = await startTunnel(scope);
    const dialer = httpConnectDialer(tunnel, target);
    const conns: Conn[] = [];
    scope.defer('idle connections', () => { for (const c of conns) c.destroy(); });
    const open = async () => {
      const conn = await dialer.dial();
      conn.on('error', () => undefined);
      try {
        await ping(conn, 30_000);
      } catch (err) {
        conn.destroy();
        throw err;
      }
      conns.push(conn);
    };

    ctx.step('warm up');
    await pool(WARMUP_CONNECTIONS, OPEN_CONCURRENCY, open);
    if (!(await closeAll(conns, tunnel, 30_000))) throw new Error('warm-up connections did not close within 30 s');
    await sleep(SETTLE_MS);
    const before = await snapshot(tunnel);
    ctx.info(`before: server ${(before.server.bytes / MiB).toFixed(1)} MiB, agent ${(before.agent.bytes / MiB).toFixed(1)} MiB`);
    ctx.info(`before: server ${await heapOf(tunnel.server.healthPort)}; agent ${await heapOf(tunnel.agent.healthPort)}`);

    ctx.step(`open ${count} idle connections`);
    const openStart = now();
    const deadline = openStart + (config.full ? 300_000 : 120_000);
    let failures = 0;
    let firstFailure = '';
    await pool(count, OPEN_CONCURRENCY, async () => {
      if (now() > deadline) return;
      try {
        await open();
      } catch (err) {
        failures++;
        firstFailure ||= (err as Error).message;
      }
    });
    const opened = conns.length;
    const openSeconds = (now() - openStart) / 1000;
    ctx.info(`${opened} open in ${openSeconds.toFixed(1)} s${failures ? `, ${failures} failed (${firstFailure})` : ''}`);
    if (failures > 0) notes.push(`${failures} connections failed to open (first: ${firstFailure})`);
    if (opened < count && failures === 0) notes.push(`opening stopped at the time limit after ${opened} of ${count}`);
    await sleep(SETTLE_MS);
    const seen = await gauges(tunnel);
    const during = await snapshot(tunnel);
    ctx.info(`open: server ${(during.server.bytes / MiB).toFixed(1)} MiB (sees ${seen.server}), agent ${(during.agent.bytes / MiB).toFixed(1)} MiB (sees ${seen.agent})`);
    ctx.info(`open: server ${await heapOf(tunnel.server.healthPort)}; agent ${await heapOf(tunnel.agent.healthPort)}`);
    if (seen.server !== opened || seen.agent !== opened) notes.push(`with ${opened} open the server counted ${seen.server} and the agent ${seen.agent}`);

    ctx.step('close them and wait for the tunnel to settle');
    const closeStart = now();
    const settled = await closeAll(conns, tunnel, 60_000);
    const closeSeconds = (now() - closeStart) / 1000;
    if (!settled) {
      const g = await gauges(tunnel).catch(() => ({ server: NaN, agent: NaN }));
      notes.push(`60 s after closing, the server still counted ${g.server} connections and the agent ${g.agent}`);
    }
    await sleep(SETTLE_AFTER_CLOSE_MS);
    const after = await snapshot(tunnel);
    ctx.info(`closed in ${closeSeconds.toFixed(1)} s; after: server ${(after.server.bytes / MiB).toFixed(1)} MiB, agent ${(after.agent.bytes / MiB).toFixed(1)} MiB`);
    ctx.info(`after: server ${await heapOf(tunnel.server.healthPort)}; agent ${await heapOf(tunnel.agent.healthPort)}`);
    for (const [name, proc] of [['server', tunnel.server.proc], ['agent', tunnel.agent.proc]] as const) {
      ctx.info(`${name}: ${lastReclaim(proc.output) ?? 'no collection after the connections closed'}`);
    }

    const perConn = (a: number, b: number) => (opened > 0 ? (a - b) / opened / KiB : null);
    const source = before.server.source === 'proc'
      ? 'RSS from /proc/<pid>/status (VmRSS): the binaries\' /metrics have no process_resident_memory_bytes'
      : 'RSS from process_resident_memory_bytes';
    const common = [source, ...notes].join('; ');
    ctx.record({ figure: `server RSS per connection (${opened})`, value: perConn(during.server.bytes, before.server.bytes), unit: 'KiB', target: { on: 'value', op: '<=', limit: 64 }, note: common || undefined });
    ctx.record({ figure: `agent RSS per connection (${opened})`, value: perConn(during.agent.bytes, before.agent.bytes), unit: 'KiB', target: { on: 'value', op: '<=', limit: 16 } });
    ctx.record({ figure: `server RSS with ${opened} open`, value: during.server.bytes / MiB, unit: 'MiB', baseline: { label: 'before', value: before.server.bytes / MiB } });
    ctx.record({ figure: 'server RSS after close', value: after.server.bytes / MiB, unit: 'MiB', baseline: { label: 'before', value: before.server.bytes / MiB }, target: { on: 'ratio', op: '<=', limit: 1.25 } });
    ctx.record({ figure: `agent RSS with ${opened} open`, value: during.agent.bytes / MiB, unit: 'MiB', baseline: { label: 'before', value: before.agent.bytes / MiB } });
    ctx.record({ figure: 'agent RSS after close', value: after.agent.bytes / MiB, unit: 'MiB', baseline: { label: 'before', value: before.agent.bytes / MiB }, target: { on: 'ratio', op: '<=', limit: 1.25 } });
    ctx.record({ figure: 'client (bench) RSS per connection', value: perConn(during.client, before.client), unit: 'KiB' });
    ctx.record({ figure: 'connections opened per second', value: opened / openSeconds, unit: 'conn/s' });
  },
};
