/**
 * Whole-system tests: the real tunnel-server, tunnel-agent and tunnel-client binaries on
 * 127.0.0.1 and unix sockets, with the library's dialers as clients.
 */
import test from 'ava';
import http from 'node:http';
import net from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import {
  workspace, startServer, startAgent, httpTarget, echoTarget, runToEnd, eventually, metric, exchange, sha256, httpGet, unusedPort,
  type Workspace, type ServerHandle, type AgentHandle, type Target,
} from './helpers/system.js';
import { dialHttpConnect, ProxyError } from '../lib/client/http-connect-dialer.js';
import { dialGrpc } from '../lib/client/grpc-dialer.js';
import { TunnelHttpAgent, createTunnelDialer } from '../lib/client/index.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';
import type { TlsSource } from '../lib/pki/tls-source.js';

function clientTls(ws: Workspace): Promise<TlsSource> {
  return FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
}

function certFlags(ws: Workspace): string[] {
  return [`--ca-cert=${ws.pki.caCert}`, `--client-cert=${ws.pki.clientCert}`, `--client-key=${ws.pki.clientKey}`];
}

/** GET http://address/path over an already-tunneled socket. */
function getOver(socket: net.Socket | NodeJS.ReadWriteStream, address: string, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.request({ createConnection: () => socket as net.Socket, host: address.split(':')[0], path }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => { body += d.toString(); });
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.end();
  });
}

// ---- seed cases ------------------------------------------------------------------------

test.serial('seed case 1 and 3: an HTTP target through HTTP-CONNECT (mTLS and unix socket) and gRPC (unix socket and mTLS)', async (t) => {
  const ws = await workspace();
  const target = await httpTarget('c1');
  const server = await startServer(ws);
  const agent = await startAgent(ws, server, 'c1');
  try {
    // Our agent and server carry each direction on its own connection.
    t.regex(agent.proc.output, /connected to tunnel server .*flowControl=on streams=split/);
    await server.proc.waitFor(/agent connected .*flowControl=on streams=split/);
    const request = ['--request-host=c1', `--request-port=${target.port}`, '--request-path=success'];

    const viaConnect = await runToEnd('tunnel-client', ['--mode=http-connect', '--proxy-host=127.0.0.1', `--proxy-port=${server.connectPort}`, ...certFlags(ws), ...request]);
    t.is(viaConnect.code, 0, viaConnect.stderr);
    t.regex(viaConnect.stdout, /HTML Response:\n.*The success test page! \(c1\)/s);

    const viaConnectUds = await runToEnd('tunnel-client', ['--mode=http-connect', `--proxy-uds=${server.connectUds}`, ...request]);
    t.is(viaConnectUds.code, 0, viaConnectUds.stderr);
    t.regex(viaConnectUds.stdout, /The success test page! \(c1\)/);

    const viaGrpcUds = await runToEnd('tunnel-client', ['--mode=grpc', `--proxy-uds=${server.grpcUds}`, ...request]);
    t.is(viaGrpcUds.code, 0, viaGrpcUds.stderr);
    t.regex(viaGrpcUds.stdout, /HTML Response:\n.*The success test page! \(c1\)/s);

    const viaGrpcTls = await runToEnd('tunnel-client', ['--mode=grpc', '--proxy-host=127.0.0.1', `--proxy-port=${server.grpcPort}`, ...certFlags(ws), ...request]);
    t.is(viaGrpcTls.code, 0, viaGrpcTls.stderr);
    t.regex(viaGrpcTls.stdout, /The success test page! \(c1\)/);

    // The same through the library.
    const tls = await clientTls(ws);
    const address = `c1:${target.port}`;
    t.regex(await getOver(await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, address), address, '/success'), /The success test page!/);
    t.regex(await getOver(await dialGrpc({ uds: server.grpcUds }, address), address, '/success'), /The success test page!/);
    for (const mode of ['http-connect', 'grpc'] as const) {
      const dial = mode === 'grpc'
        ? createTunnelDialer({ mode, proxy: { uds: server.grpcUds } })
        : createTunnelDialer({ mode, proxy: { host: '127.0.0.1', port: server.connectPort, tls } });
      const httpAgent = new TunnelHttpAgent(dial);
      const body = await new Promise<string>((resolve, reject) => {
        http.get({ host: 'c1', port: target.port, path: '/via-agent', agent: httpAgent }, (res) => {
          let text = '';
          res.on('data', (d: Buffer) => { text += d.toString(); });
          res.on('end', () => resolve(text));
        }).on('error', reject);
      });
      t.is(body, 'c1 GET /via-agent', `through ${mode}`);
      httpAgent.destroy();
    }

    // The mTLS frontend makes every connection a full handshake: it issues no resumable sessions.
    const handshake = (session?: Buffer) => new Promise<{ session?: Buffer; reused: boolean }>((resolve, reject) => {
      const { key, cert, ca } = tls.current();
      const socket = tlsConnect({ host: '127.0.0.1', port: server.connectPort, key, cert, ca, servername: 'localhost', session });
      let last: Buffer | undefined;
      socket.on('session', (s: Buffer) => { last = s; });
      socket.on('error', reject);
      socket.once('secureConnect', () => setTimeout(() => { resolve({ session: last, reused: socket.isSessionReused() }); socket.destroy(); }, 50));
    });
    const first = await handshake();
    t.false((await handshake(first.session)).reused, 'a session offered again is not resumed');

    // tunnel-client reports a failed dial clearly.
    const unknown = await runToEnd('tunnel-client', ['--mode=http-connect', '--proxy-host=127.0.0.1', `--proxy-port=${server.connectPort}`, ...certFlags(ws), '--request-host=nowhere', '--request-port=80']);
    t.is(unknown.code, 1);
    t.regex(unknown.stderr, /No agent available/);
  } finally {
    await agent.stop();
    await server.stop();
    await target.close();
    ws.cleanup();
  }
});

// ---- routing -------------------------------------------------------------------------------

/** Two targets on the same port of 127.0.0.1 and 127.0.0.2, named one and two. */
async function twoTargets(): Promise<{ port: number; one: Target; two: Target; close(): Promise<void> }> {
  const one = await httpTarget('one');
  const server = http.createServer((req, res) => res.end(`two ${req.method} ${req.url}`));
  server.listen(one.port, '127.0.0.2');
  await once(server, 'listening');
  return {
    port: one.port,
    one,
    two: { port: one.port, open: 0, close: async () => { server.close(); } },
    close: async () => { await one.close(); server.closeAllConnections(); server.close(); },
  };
}

async function fetchVia(server: ServerHandle, tls: TlsSource, address: string, path = '/'): Promise<string> {
  return getOver(await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, address), address, path);
}

test.serial('routing: destHost sends each cluster\'s dials to its own agent only', async (t) => {
  const ws = await workspace();
  const targets = await twoTargets();
  const server = await startServer(ws);
  const agents = [
    await startAgent(ws, server, 'c1'),
    await startAgent(ws, server, 'c2', ['--host-alias=c2=127.0.0.2']),
  ];
  try {
    const tls = await clientTls(ws);
    for (let i = 0; i < 5; i++) {
      t.is(await fetchVia(server, tls, `c1:${targets.port}`, '/a'), 'one GET /a');
      t.is(await fetchVia(server, tls, `c2:${targets.port}`, '/b'), 'two GET /b');
    }
    const err = await t.throwsAsync(fetchVia(server, tls, `c3:${targets.port}`), { instanceOf: ProxyError });
    t.is((err).statusCode, 500);
    t.is((err).body, 'currently no tunnels available: No agent available');
    // destHost never falls back to another cluster for an address it does not know.
    await t.throwsAsync(fetchVia(server, tls, `127.0.0.1:${targets.port}`), { instanceOf: ProxyError, message: /No agent available/ });
  } finally {
    for (const a of agents) await a.stop();
    await server.stop();
    await targets.close();
    ws.cleanup();
  }
});

test.serial('routing: default falls back to any agent, defaultRoute only to agents that announced it', async (t) => {
  const ws = await workspace();
  const targets = await twoTargets();
  const withDefault = await startServer(ws, ['--proxy-strategies=destHost,default'], 'default');
  // An agent that announces the default route holds no cluster certificate for it: the reference's rule.
  const withRoute = await startServer(ws, ['--proxy-strategies=destHost,defaultRoute', '--agent-identity=off'], 'route');
  const agents: AgentHandle[] = [];
  try {
    agents.push(await startAgent(ws, withDefault, 'c1'));
    // Behind defaultRoute: only r1 announced default-route, and only r1 knows "elsewhere".
    agents.push(await startAgent(ws, withRoute, 'r1', ['--agent-identifiers=host=r1&default-route=true', '--host-alias=elsewhere=127.0.0.1']));
    agents.push(await startAgent(ws, withRoute, 'r2'));
    const tls = await clientTls(ws);
    t.is(await fetchVia(withDefault, tls, `127.0.0.1:${targets.port}`, '/d'), 'one GET /d');
    t.is(await fetchVia(withDefault, tls, `c1:${targets.port}`, '/e'), 'one GET /e');
    for (let i = 0; i < 6; i++) t.is(await fetchVia(withRoute, tls, `elsewhere:${targets.port}`, '/r'), 'one GET /r');
    t.is(await fetchVia(withRoute, tls, `r2:${targets.port}`, '/s'), 'one GET /s');
  } finally {
    for (const a of agents) await a.stop();
    await withDefault.stop();
    await withRoute.stop();
    await targets.close();
    ws.cleanup();
  }
});

// ---- integrity -------------------------------------------------------------------------------

test.serial('integrity: 100 concurrent connections, random sizes up to 8 MiB, both directions, sha256 intact', async (t) => {
  const ws = await workspace();
  const echo = await echoTarget();
  const server = await startServer(ws);
  const agent = await startAgent(ws, server, 'c1');
  try {
    const tls = await clientTls(ws);
    const address = `c1:${echo.port}`;
    const results = await Promise.all(Array.from({ length: 100 }, async (_, i) => {
      const size = 1 + Math.floor(Math.random() * 8 * 1024 * 1024);
      const payload = randomBytes(size);
      const socket = i % 2 === 0
        ? await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, address)
        : await dialGrpc({ uds: server.grpcUds }, address);
      const digest = await exchange(socket, payload, size, 120_000);
      socket.destroy();
      return digest === sha256(payload);
    }));
    t.is(results.filter(Boolean).length, 100);
    await eventually(async () => await metric(server.healthPort, 'konnectivity_network_proxy_server_established_connections') === 0
      && await metric(agent.healthPort, 'konnectivity_network_proxy_agent_open_endpoint_connections') === 0
      && echo.open === 0, 10_000, 'connection tables empty');
    t.pass();
  } finally {
    await agent.stop();
    await server.stop();
    await echo.close();
    ws.cleanup();
  }
});

// ---- life cycle -------------------------------------------------------------------------------

test.serial('life cycle: tunnels come back after the agent restarts and after the server restarts', async (t) => {
  const ws = await workspace();
  const target = await httpTarget('c1');
  const agentPort = await unusedPort();
  let server = await startServer(ws, [`--agent-port=${agentPort}`]);
  let agent = await startAgent(ws, server, 'c1');
  try {
    const tls = await clientTls(ws);
    const address = `c1:${target.port}`;
    t.is(await fetchVia(server, tls, address, '/1'), 'c1 GET /1');

    // An open connection through the agent closes when the agent dies.
    const open = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, address);
    const closed = once(open, 'close');
    await agent.proc.stop('SIGKILL');
    await closed;
    await eventually(async () => (await httpGet(server.healthPort, '/readyz')).status === 503, 10_000, 'server not ready without agents');
    agent = await startAgent(ws, server, 'c1');
    t.is(await fetchVia(server, tls, address, '/2'), 'c1 GET /2');

    // The agent reconnects by itself when the server comes back on the same port.
    await server.stop();
    await agent.proc.waitFor(/lost the stream to the tunnel server/);
    const mark = agent.proc.output.length;
    server = await startServer(ws, [`--agent-port=${agentPort}`]);
    await agent.proc.waitFor(/connected to tunnel server/, 20_000, mark);
    t.is(await fetchVia(server, tls, address, '/3'), 'c1 GET /3');
    t.is((await httpGet(agent.healthPort, '/readyz')).status, 200);
    t.is((await httpGet(server.healthPort, '/readyz')).status, 200);
  } finally {
    await agent.stop();
    await server.stop();
    await target.close();
    ws.cleanup();
  }
});
