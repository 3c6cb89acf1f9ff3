/**
 * Life-cycle hardening of tunneled connections: the agent's --idle-timeout closes a
 * connection that moved no byte for that long, on both sides (the client's socket and the
 * target's), and never one that keeps moving bytes; TCP keepalive is on for the server's
 * HTTP-CONNECT client sockets and the agent's target sockets (--tcp-keepalive), as the
 * kernel's socket table shows.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { dialGrpc } from '../lib/client/grpc-dialer.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';
import { echoTarget, eventually, metric, runToEnd, echoed, startAgent, startServer, workspace } from './helpers/system.js';

type Stream = Duplex & { destroy(): unknown; destroyed: boolean };

/** The kernel's established TCP sockets matching an `ss` filter, with their timers. */
async function sockets(filter: string): Promise<string> {
  const child = spawn('ss', ['-tnoH', 'state', 'established', ...filter.split(' ')], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  await once(child, 'exit');
  return out;
}

test('--idle-timeout closes an idle connection on both sides, and not one that keeps moving bytes', async (t) => {
  const ws = await workspace();
  t.teardown(() => ws.cleanup());
  const target = await echoTarget();
  t.teardown(() => target.close());
  const server = await startServer(ws);
  t.teardown(() => server.stop());
  const agent = await startAgent(ws, server, 'cluster-a', ['--idle-timeout=2s']);
  t.teardown(() => agent.stop());
  const address = `cluster-a:${target.port}`;
  const tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
  const idle = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, address) as Stream;
  const idleGrpc = await dialGrpc({ uds: server.grpcUds }, address) as unknown as Stream;
  const busy = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, address) as Stream;
  t.teardown(() => { for (const conn of [idle, idleGrpc, busy]) conn.destroy(); });
  for (const conn of [idle, idleGrpc, busy]) t.true(await echoed(conn, 64 * 1024));
  t.is(target.open, 3);
  const idleClosed = Promise.all([once(idle, 'close'), once(idleGrpc, 'close')]);

  // The busy one moves a little every 200 ms (a tenth of the timeout), for three times the timeout.
  const until = Date.now() + 6_000;
  let rounds = 0;
  while (Date.now() < until) {
    t.true(await echoed(busy, 1024), `round ${rounds}`);
    rounds++;
    await sleep(200);
  }
  await idleClosed;
  t.false(busy.destroyed, 'the busy connection is still open');
  t.true(await echoed(busy, 256 * 1024));
  // Closed at the target too: only the busy connection's socket is left there.
  await eventually(() => target.open === 1, 5_000, 'the idle connections\' target sockets close');
  t.is(await metric(agent.healthPort, 'konnectivity_network_proxy_agent_idle_connections_closed_total'), 2);
  t.regex(agent.proc.output, /closing an idle tunneled connection address=cluster-a:\d+ idle=\d+s idleTimeout=2000ms/, agent.proc.output.slice(-2000));
});

test('TCP keepalive is on for HTTP-CONNECT client sockets and target sockets (--tcp-keepalive), and off with 0', async (t) => {
  const ws = await workspace();
  t.teardown(() => ws.cleanup());
  const target = await echoTarget();
  t.teardown(() => target.close());
  const plainTarget = await echoTarget();
  t.teardown(() => plainTarget.close());
  const server = await startServer(ws, ['--tcp-keepalive=45s']);
  t.teardown(() => server.stop());
  const agent = await startAgent(ws, server, 'cluster-a', ['--tcp-keepalive=50s']);
  t.teardown(() => agent.stop());
  const plainServer = await startServer(ws, ['--tcp-keepalive=0'], 'plain');
  t.teardown(() => plainServer.stop());
  const plainAgent = await startAgent(ws, plainServer, 'cluster-b', ['--tcp-keepalive=0']);
  t.teardown(() => plainAgent.stop());
  const tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
  const conn = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, `cluster-a:${target.port}`) as Stream;
  const plain = await dialHttpConnect({ host: '127.0.0.1', port: plainServer.connectPort, tls }, `cluster-b:${plainTarget.port}`) as Stream;
  t.teardown(() => { conn.destroy(); plain.destroy(); });
  t.true(await echoed(conn, 64 * 1024));
  t.true(await echoed(plain, 64 * 1024));
  // The server's end of the client connection, and the agent's end of the target connection.
  // (A socket with unacknowledged data shows its retransmit timer instead, for a moment.)
  const shows = async (filter: string, pattern: RegExp) => {
    let seen = '';
    await eventually(async () => pattern.test(seen = await sockets(filter)), 5_000, `${filter} shows ${pattern}`).catch(() => undefined);
    t.regex(seen, pattern, filter);
  };
  await shows(`sport = :${server.connectPort}`, /timer:\(keepalive,4\dsec/);
  await shows(`dport = :${target.port}`, /timer:\(keepalive,(50|4\d)sec/);
  t.notRegex(await sockets(`sport = :${plainServer.connectPort}`), /keepalive/);
  t.notRegex(await sockets(`dport = :${plainTarget.port}`), /keepalive/);
  t.true(await echoed(conn, 64 * 1024));
});

test('--tcp-keepalive takes whole seconds (the kernel\'s unit) or 0; --idle-timeout a duration', async (t) => {
  const ws = await workspace();
  try {
    for (const [binary, args, message] of [
      ['tunnel-agent', ['--cluster-name=cluster-a', '--tcp-keepalive=500ms'], /--tcp-keepalive=500ms is not a keepalive time: give whole seconds from 1s to 32767s, or 0/],
      ['tunnel-server', ['--tcp-keepalive=1.5s'], /--tcp-keepalive=1\.5s is not a keepalive time/],
      ['tunnel-agent', ['--cluster-name=cluster-a', '--idle-timeout=soon'], /--idle-timeout=soon is not a duration/],
    ] as const) {
      const result = await runToEnd(binary, [`--state-dir=${ws.dir}`, '--health-port=off', ...args]);
      t.is(result.code, 2, result.stderr);
      t.regex(result.stderr, message);
    }
  } finally {
    ws.cleanup();
  }
});
