/**
 * /readyz: the server answers 503 with the reason while fewer agents than --ready-min-agents
 * are connected (default 1, as the reference; 0 is ready without agents) and while it is
 * draining; the agent answers 503 until it holds a stream to a server.
 */
import test from 'ava';
import { HealthServer } from '../lib/observe/health-server.js';
import { MetricsRegistry } from '../lib/observe/metrics.js';
import { Readiness } from '../lib/observe/readiness.js';
import { eventually, httpGet, startAgent, startServer, workspace } from './helpers/system.js';

test('/readyz flips with --ready-min-agents as agents connect and disconnect', async (t) => {
  const ws = await workspace();
  const server = await startServer(ws, ['--ready-min-agents=2']);
  const agents: Array<Awaited<ReturnType<typeof startAgent>>> = [];
  try {
    let ready = await httpGet(server.healthPort, '/readyz');
    t.is(ready.status, 503);
    t.regex(ready.body, /\[-\]agents failed: 0 of 2 agents connected \(--ready-min-agents=2\)/);
    t.regex(ready.body, /\[\+\]draining ok/);
    agents.push(await startAgent(ws, server, 'cluster-a'));
    ready = await httpGet(server.healthPort, '/readyz');
    t.is(ready.status, 503, 'one agent of two');
    t.regex(ready.body, /1 of 2 agents connected/);
    agents.push(await startAgent(ws, server, 'cluster-b'));
    await eventually(async () => (await httpGet(server.healthPort, '/readyz')).status === 200, 10_000, 'ready with two agents');
    t.is((await httpGet(server.healthPort, '/readyz')).body, 'ok');
    t.regex((await httpGet(server.healthPort, '/readyz?verbose')).body, /\[\+\]agents ok\n\[\+\]draining ok/);
    await agents.pop()!.stop();
    await eventually(async () => (await httpGet(server.healthPort, '/readyz')).status === 503, 10_000, 'not ready when an agent left');
    t.regex((await httpGet(server.healthPort, '/readyz')).body, /1 of 2 agents connected/);
    t.is((await httpGet(server.healthPort, '/healthz')).status, 200, 'alive all along');
  } finally {
    for (const agent of agents) await agent.stop();
    await server.stop();
    ws.cleanup();
  }
});

test('without the flag the server is ready once an agent is connected, with 0 at once; the agent once it holds a server stream', async (t) => {
  const ws = await workspace();
  const server = await startServer(ws, [], 'default');
  const anyway = await startServer(ws, ['--ready-min-agents=0'], 'anyway');
  try {
    const ready = await httpGet(server.healthPort, '/readyz');
    t.is(ready.status, 503);
    t.regex(ready.body, /\[-\]agents failed: no connection to any proxy agent/);
    t.is((await httpGet(anyway.healthPort, '/readyz')).status, 200, 'ready without agents');
    const agent = await startAgent(ws, server, 'cluster-a');
    try {
      t.is((await httpGet(server.healthPort, '/readyz')).status, 200);
      t.is((await httpGet(agent.healthPort, '/readyz')).status, 200);
      await server.stop();
      await eventually(async () => (await httpGet(agent.healthPort, '/readyz')).status === 503, 10_000, 'the agent is not ready without a server');
      t.regex((await httpGet(agent.healthPort, '/readyz')).body, /\[-\]server-connected failed: no servers connected/);
    } finally {
      await agent.stop();
    }
  } finally {
    await server.stop();
    await anyway.stop();
    ws.cleanup();
  }
});

test('a draining server is not ready, with the reason; setDraining(undefined) makes it ready again', async (t) => {
  const readiness = new Readiness();
  let agents = 1;
  const health = new HealthServer({ host: '127.0.0.1', port: 0, metrics: new MetricsRegistry('test'), readiness: readiness.serverChecks(() => agents, 1) });
  const { port } = await health.listen();
  try {
    t.is((await httpGet(port, '/readyz')).status, 200);
    readiness.setDraining('shutting down (SIGTERM)');
    t.true(readiness.draining);
    const draining = await httpGet(port, '/readyz');
    t.is(draining.status, 503);
    t.regex(draining.body, /\[\+\]agents ok\n\[-\]draining failed: the server is draining: shutting down \(SIGTERM\)/);
    agents = 0;
    t.regex((await httpGet(port, '/readyz')).body, /\[-\]agents failed: no connection to any proxy agent\n\[-\]draining failed/);
    agents = 1;
    readiness.setDraining(undefined);
    t.is((await httpGet(port, '/readyz')).status, 200);
  } finally {
    await health.close();
  }
});
