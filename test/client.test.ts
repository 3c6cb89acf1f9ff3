/**
 * The client role against in-process fake frontends: the HTTP-CONNECT and gRPC dialers, the
 * http(s) agents, and the tunnel-client binary.
 */
import test from 'ava';
import { WINDOW_GROWTH } from '../lib/mux/tunnel-connection.js';
import { CoreV1Api, KubeConfig, type RequestContext } from '@kubernetes/client-node';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import {
  DialError, ProxyError, TunnelHttpAgent, TunnelHttpsAgent, createTunnelDialer, dialGrpc, dialHttpConnect, type TunnelDial,
} from '../lib/client/index.js';
import { ensureLocalPki, type LocalPkiPaths } from '../lib/pki/local-pki.js';
import { FileTlsSource, localPkiTlsSource, type TlsSource } from '../lib/pki/tls-source.js';
import { MD_FLOW_CONTROL } from '../lib/wire/protocol.js';
import {
  echoTarget, fakeConnectProxy, fakeGrpcProxy, httpTarget, httpsTarget, type Listening,
} from './helpers/fake-proxies.js';
import { BIN } from './helpers/paths.js';
import { unusedPort } from './helpers/system.js';

/** Every wait in this file is bounded by this. */
const WAIT_MS = 10_000;
const BINARY_TIMEOUT_MS = 20_000;
const CLOSE_WAIT_MS = 3_000;
const NO_AGENT_BODY = 'currently no tunnels available: No agent available';

const workDir = mkdtempSync(join(tmpdir(), 'tunnel-client-test-'));
const pkiReady = ensureLocalPki({ stateDir: join(workDir, 'state') });
/** A second, unrelated CA: its client certificate must be refused by the proxy. */
const strangerPkiReady = ensureLocalPki({ stateDir: join(workDir, 'stranger') });
let socketCount = 0;

test.after.always(() => rmSync(workDir, { recursive: true, force: true }));

function socketPath(): string {
  return join(workDir, `s${socketCount++}.sock`);
}

async function clientTls(): Promise<{ pki: LocalPkiPaths; tls: TlsSource }> {
  const pki = await pkiReady;
  return { pki, tls: await localPkiTlsSource(pki, 'client') };
}

/** Rejects after WAIT_MS so a hang fails the test instead of stalling the run. */
function bounded<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function eventually(condition: () => boolean, what: string, waitMs = WAIT_MS): Promise<void> {
  const deadline = Date.now() + waitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** Writes `size` random bytes and checks the echo comes back intact. */
async function echoes(conn: Duplex, size: number): Promise<boolean> {
  const payload = randomBytes(size);
  const chunks: Buffer[] = [];
  let received = 0;
  const done = new Promise<void>((resolve, reject) => {
    conn.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      received += chunk.length;
      if (received >= size) resolve();
    });
    conn.once('error', reject);
  });
  conn.write(payload);
  await bounded(done, `${size} echoed bytes`);
  return sha256(Buffer.concat(chunks)) === sha256(payload);
}

function get(url: string, options: https.RequestOptions): Promise<{ status: number; body: string }> {
  const request = url.startsWith('https:') ? https.request : http.request;
  return bounded(new Promise((resolve, reject) => {
    request(url, options, (res) => {
      let body = '';
      res.on('data', (chunk: Buffer) => { body += chunk.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject).end();
  }), `GET ${url}`);
}

async function withServers<T>(servers: Listening[], body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } finally {
    await Promise.all(servers.map((server) => server.close()));
  }
}

/** Runs dist/bin/tunnel-client.js to its end (killed after BINARY_TIMEOUT_MS). */
function runClient(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [join(BIN, 'tunnel-client.js'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString(); });
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
  const killer = setTimeout(() => child.kill('SIGKILL'), BINARY_TIMEOUT_MS);
  return once(child, 'close').then(([code]) => {
    clearTimeout(killer);
    return { code: code as number | null, stdout, stderr };
  });
}

// ---- HTTP-CONNECT dialer ---------------------------------------------------------------

test('dialHttpConnect over mTLS moves bytes both ways and asks for the given address', async (t) => {
  const { pki, tls: source } = await clientTls();
  const echo = await echoTarget();
  const proxy = await fakeConnectProxy({ pki });
  await withServers([echo, proxy], async () => {
    const socket = await dialHttpConnect({ host: '127.0.0.1', port: proxy.port, tls: source }, `127.0.0.1:${echo.port}`, { timeoutMs: WAIT_MS });
    t.true(await echoes(socket, 256 * 1024 + 3));
    t.deepEqual(proxy.addresses, [`127.0.0.1:${echo.port}`]);
    socket.destroy();
  });
});

test('dialHttpConnect over a unix socket moves bytes both ways without TLS', async (t) => {
  const echo = await echoTarget();
  const path = socketPath();
  const proxy = await fakeConnectProxy({ path });
  await withServers([echo, proxy], async () => {
    const socket = await dialHttpConnect({ path }, `localhost:${echo.port}`, { timeoutMs: WAIT_MS });
    t.false(socket instanceof tls.TLSSocket);
    t.true(await echoes(socket, 100_000));
    socket.destroy();
  });
});

test('a 500 with a body becomes a ProxyError with status, body and an operator message', async (t) => {
  const { pki, tls: source } = await clientTls();
  const proxy = await fakeConnectProxy({ pki, refuse: { status: 500, message: 'Internal Server Error', body: NO_AGENT_BODY } });
  await withServers([proxy], async () => {
    const err = await t.throwsAsync(dialHttpConnect({ host: '127.0.0.1', port: proxy.port, tls: source }, 'c1:443', { timeoutMs: WAIT_MS }), { instanceOf: ProxyError });
    t.is(err.statusCode, 500);
    t.is(err.body, NO_AGENT_BODY);
    t.is(err.message, `proxy 127.0.0.1:${proxy.port} refused CONNECT c1:443: 500 Internal Server Error: ${NO_AGENT_BODY}`);
  });
});

test('an error body without Content-Length is read until the proxy closes', async (t) => {
  const path = socketPath();
  const proxy = await fakeConnectProxy({ path, refuse: { status: 502, message: 'Bad Gateway', body: 'dial tcp 10.0.0.1:443: connect: connection refused', contentLength: false } });
  await withServers([proxy], async () => {
    const err = await t.throwsAsync(dialHttpConnect({ path }, 'c1:443', { timeoutMs: WAIT_MS }), { instanceOf: ProxyError });
    t.is(err.statusCode, 502);
    t.is(err.body, 'dial tcp 10.0.0.1:443: connect: connection refused');
    t.regex(err.message, new RegExp(`^proxy unix:${path} refused CONNECT c1:443: 502 Bad Gateway: dial tcp`));
  });
});

test('bytes the proxy sends right after the 200 are not lost', async (t) => {
  const echo = await echoTarget();
  const path = socketPath();
  const proxy = await fakeConnectProxy({ path, early: Buffer.from('EARLY-BYTES|') });
  await withServers([echo, proxy], async () => {
    const socket = await dialHttpConnect({ path }, `127.0.0.1:${echo.port}`, { timeoutMs: WAIT_MS });
    socket.write('echoed');
    let text = '';
    await bounded(new Promise<void>((resolve) => {
      socket.on('data', (chunk: Buffer) => {
        text += chunk.toString();
        if (text.length >= 'EARLY-BYTES|echoed'.length) resolve();
      });
    }), 'early bytes and echo');
    t.is(text, 'EARLY-BYTES|echoed');
    socket.destroy();
  });
});

test('the mTLS proxy refuses a client certificate from another CA, and a client without one', async (t) => {
  const pki = await pkiReady;
  const stranger = await strangerPkiReady;
  const proxy = await fakeConnectProxy({ pki });
  await withServers([proxy], async () => {
    // Trusts the proxy's CA, but presents a certificate the proxy does not trust.
    const strangerTls = await FileTlsSource.load({ ca: pki.caCert, cert: stranger.clientCert, key: stranger.clientKey, role: 'stranger' });
    const err = await t.throwsAsync(dialHttpConnect({ host: '127.0.0.1', port: proxy.port, tls: strangerTls }, 'c1:443', { timeoutMs: WAIT_MS }));
    // TLS 1.3 servers reject the certificate after the client's handshake, often with no alert seen.
    t.regex(err.message, new RegExp(`^proxy 127\\.0\\.0\\.1:${proxy.port} (refused the TLS handshake|closed the connection .*TLS client certificate)`));

    const bare = tls.connect({ host: '127.0.0.1', port: proxy.port, ca: readFileSync(pki.caCert) });
    bare.on('error', () => undefined);
    bare.write('CONNECT c1:443 HTTP/1.1\r\nHost: c1:443\r\n\r\n');
    let answer = '';
    bare.on('data', (chunk: Buffer) => { answer += chunk.toString(); });
    await bounded(new Promise((resolve) => bare.once('close', resolve)), 'the proxy to drop a client without certificate');
    t.notRegex(answer, /200/);
    t.deepEqual(proxy.addresses, []);
  });
});

test('a proxy that does not answer, or is not there, fails with the proxy address', async (t) => {
  const path = socketPath();
  const proxy = await fakeConnectProxy({ path, silent: true });
  await withServers([proxy], async () => {
    const err = await t.throwsAsync(dialHttpConnect({ path }, 'c1:443', { timeoutMs: 200 }));
    t.regex(err.message, new RegExp(`^no answer from proxy unix:${path} to CONNECT c1:443 within 200 ms`));
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 50);
    const cancelled = await t.throwsAsync(dialHttpConnect({ path }, 'c1:443', { signal: abort.signal, timeoutMs: WAIT_MS }));
    t.is(cancelled.message, `CONNECT c1:443 through proxy unix:${path} was cancelled`);
  });
  const closed = net.createServer().listen(0, '127.0.0.1');
  await once(closed, 'listening');
  const { port } = closed.address() as net.AddressInfo;
  await new Promise((resolve) => closed.close(resolve));
  const { tls: source } = await clientTls();
  const refused = await t.throwsAsync(dialHttpConnect({ host: '127.0.0.1', port, tls: source }, 'c1:443', { timeoutMs: WAIT_MS }));
  t.regex(refused.message, new RegExp(`cannot connect to proxy 127\\.0\\.0\\.1:${port}: connection refused`));
  const missing = await t.throwsAsync(dialHttpConnect({ path: join(workDir, 'missing.sock') }, 'c1:443', { timeoutMs: WAIT_MS }));
  t.regex(missing.message, /unix socket does not exist/);
});

test('a proxy that goes away during the TLS handshake fails the dial, and nothing is thrown after it', async (t) => {
  // As a tunnel server killed while a client connects: the connection ends before TLS. Node
  // reports that as an error a tick after the end the dial failed on; unheard, it crashed
  // the dialing process.
  const gone = net.createServer((socket) => socket.end().resume()).listen(0, '127.0.0.1');
  await once(gone, 'listening');
  const { port } = gone.address() as net.AddressInfo;
  const { tls: source } = await clientTls();
  try {
    const err = await t.throwsAsync(dialHttpConnect({ host: '127.0.0.1', port, tls: source }, 'c1:443', { timeoutMs: WAIT_MS }));
    t.regex(err.message, new RegExp(`^proxy 127\\.0\\.0\\.1:${port} closed the connection during the TLS handshake`));
    // Time for the socket's late error: an uncaught exception fails this file.
    await new Promise((resolve) => setTimeout(resolve, 100));
  } finally {
    await new Promise((resolve) => gone.close(resolve));
  }
});

// ---- gRPC dialer ------------------------------------------------------------------------

test.serial('dialGrpc over a unix socket echoes 1 MiB with negotiated windows and leaves nothing open', async (t) => {
  const uds = socketPath();
  const window = 64 * 1024;
  const echo = await echoTarget();
  const proxy = await fakeGrpcProxy({ uds, window });
  await withServers([echo, proxy], async () => {
    const pipesBefore = pipeCount();
    const conn = await dialGrpc({ uds }, `127.0.0.1:${echo.port}`, { flowControlWindow: window, timeoutMs: WAIT_MS });
    // A window smaller than the payload: if either side failed to negotiate, the echo stalls.
    t.true(await echoes(conn, 1024 * 1024));
    // The announced window is where a connection starts: a quarter of the most it may hold.
    t.is(proxy.metadata[0].get(MD_FLOW_CONTROL)[0], `window=${window / WINDOW_GROWTH}`);
    conn.end();
    await bounded(once(conn, 'close'), 'the connection to close');
    const mux = proxy.muxes[0];
    await eventually(() => mux.stats.connections === 0 && mux.isClosed, 'the server side to drop the connection and the stream');
    // Well before the client's 10 s close timeout: the stream is cancelled once CLOSE_RSP is in.
    await eventually(() => pipeCount() <= pipesBefore, 'the gRPC client socket to close', CLOSE_WAIT_MS);
    t.is(mux.stats.connections, 0);
  });
});

test('dialGrpc does not wait for headers that the server sends only with its first message', async (t) => {
  const uds = socketPath();
  const target = await httpTarget('t');
  const proxy = await fakeGrpcProxy({ uds });
  await withServers([target, proxy], async () => {
    const conn = await dialGrpc({ uds }, `127.0.0.1:${target.port}`, { timeoutMs: WAIT_MS });
    t.true(await echoesHttp(conn));
    conn.destroy();
  });
});

test('a refused gRPC dial rejects with the server\'s text', async (t) => {
  const uds = socketPath();
  const proxy = await fakeGrpcProxy({ uds });
  const closedPort = await unusedPort();
  await withServers([proxy], async () => {
    const noAgent = await t.throwsAsync(dialGrpc({ uds }, 'c9:443', { timeoutMs: WAIT_MS }), { instanceOf: DialError });
    t.is(noAgent.message, 'No agent available');
    const refused = await t.throwsAsync(dialGrpc({ uds }, `127.0.0.1:${closedPort}`, { timeoutMs: WAIT_MS }), { instanceOf: DialError });
    t.regex(refused.message, /ECONNREFUSED/);
  });
  const gone = await t.throwsAsync(dialGrpc({ uds: join(workDir, 'missing-grpc.sock') }, 'c1:443', { timeoutMs: WAIT_MS }));
  t.regex(gone.message, /^gRPC proxy unix:\/\/\/.*missing-grpc\.sock failed before answering the dial of c1:443: UNAVAILABLE: .*listening on this socket\?$/);
});

test('dialGrpc over mTLS TCP', async (t) => {
  const { pki, tls: source } = await clientTls();
  const echo = await echoTarget();
  const proxy = await fakeGrpcProxy({ pki });
  await withServers([echo, proxy], async () => {
    const conn = await dialGrpc({ host: '127.0.0.1', port: proxy.port, tls: source }, `127.0.0.1:${echo.port}`, { timeoutMs: WAIT_MS });
    t.true(await echoes(conn, 200_000));
    conn.destroy();
    await eventually(() => proxy.muxes[0].stats.connections === 0, 'the server side to drop the connection');
  });
});

// ---- http(s) agents ---------------------------------------------------------------------

test('http.request through TunnelHttpAgent, dialing by HTTP-CONNECT and by gRPC', async (t) => {
  const { pki, tls: source } = await clientTls();
  const target = await httpTarget('c1');
  const connectProxy = await fakeConnectProxy({ pki });
  const uds = socketPath();
  const grpcProxy = await fakeGrpcProxy({ uds, window: 256 * 1024 });
  await withServers([target, connectProxy, grpcProxy], async () => {
    const dialers: Record<string, TunnelDial> = {
      'http-connect': createTunnelDialer({ mode: 'http-connect', proxy: { host: '127.0.0.1', port: connectProxy.port, tls: source } }),
      grpc: createTunnelDialer({ mode: 'grpc', proxy: { uds } }),
    };
    for (const [mode, dial] of Object.entries(dialers)) {
      const agent = new TunnelHttpAgent(dial);
      const response = await get(`http://127.0.0.1:${target.port}/success`, { agent });
      t.deepEqual(response, { status: 200, body: 'c1 GET /success' }, mode);
      agent.destroy();
    }
    t.deepEqual(connectProxy.addresses, [`127.0.0.1:${target.port}`]);
  });
});

test('a keep-alive TunnelHttpAgent reuses one tunneled connection, and request timeouts fire', async (t) => {
  const uds = socketPath();
  const target = await httpTarget('c1');
  const proxy = await fakeGrpcProxy({ uds });
  await withServers([target, proxy], async () => {
    const agent = new TunnelHttpAgent(createTunnelDialer({ mode: 'grpc', proxy: { uds } }), { keepAlive: true, timeout: WAIT_MS });
    for (const path of ['/one', '/two']) {
      t.is((await get(`http://localhost:${target.port}${path}`, { agent })).body, `c1 GET ${path}`);
    }
    t.is(proxy.muxes.length, 1);

    const timedOut = await bounded(new Promise<string>((resolve) => {
      const req = http.get(`http://localhost:${target.port}/hang`, { agent, timeout: 100 });
      req.on('error', () => undefined);
      req.on('timeout', () => {
        req.destroy();
        resolve('timeout');
      });
    }), 'the request timeout');
    t.is(timedOut, 'timeout');
    agent.destroy();
  });
});

test('https.request through TunnelHttpsAgent verifies the target end to end', async (t) => {
  const { pki, tls: source } = await clientTls();
  const target = await httpsTarget(pki, (req, res) => res.end(`secure ${req.url}`));
  const proxy = await fakeConnectProxy({ pki });
  const uds = socketPath();
  const grpcProxy = await fakeGrpcProxy({ uds });
  await withServers([target, proxy, grpcProxy], async () => {
    const ca = readFileSync(pki.caCert);
    const viaConnect = new TunnelHttpsAgent(createTunnelDialer({ mode: 'http-connect', proxy: { host: '127.0.0.1', port: proxy.port, tls: source } }));
    t.is((await get(`https://localhost:${target.port}/a`, { agent: viaConnect, ca })).body, 'secure /a');
    const viaGrpc = new TunnelHttpsAgent(createTunnelDialer({ mode: 'grpc', proxy: { uds } }));
    t.is((await get(`https://127.0.0.1:${target.port}/b`, { agent: viaGrpc, ca })).body, 'secure /b');
    // Without the CA the target's certificate does not verify: TLS really runs to the target.
    await t.throwsAsync(get(`https://localhost:${target.port}/c`, { agent: viaGrpc }), { message: /self.signed|unable to verify|local issuer/i });
    viaConnect.destroy();
    viaGrpc.destroy();
    await eventually(() => grpcProxy.muxes.every((mux) => mux.stats.connections === 0), 'tunneled connections to close');
  });
});

test('@kubernetes/client-node lists namespaces through the tunnel', async (t) => {
  const { pki, tls: source } = await clientTls();
  const target = await httpsTarget(pki, (req, res) => {
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify({ kind: 'NamespaceList', apiVersion: 'v1', metadata: {}, items: [{ metadata: { name: `seen ${req.url} ${req.headers.authorization}` } }] }));
  });
  const proxy = await fakeConnectProxy({ pki });
  await withServers([target, proxy], async () => {
    const ca = readFileSync(pki.caCert);
    const agent = new TunnelHttpsAgent(createTunnelDialer({ mode: 'http-connect', proxy: { host: '127.0.0.1', port: proxy.port, tls: source } }), { ca });
    /** The recipe for client-node: keep its authentication, swap in the tunnel's agent. */
    class TunnelKubeConfig extends KubeConfig {
      override async applySecurityAuthentication(context: RequestContext): Promise<void> {
        await super.applySecurityAuthentication(context);
        context.setAgent(agent);
      }
    }
    const kc = new TunnelKubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'c1', server: `https://127.0.0.1:${target.port}`, caData: ca.toString('base64'), skipTLSVerify: false }],
      users: [{ name: 'u', token: 'token' }],
      contexts: [{ name: 'c1', cluster: 'c1', user: 'u' }],
      currentContext: 'c1',
    });
    const list = await bounded(kc.makeApiClient(CoreV1Api).listNamespace(), 'listNamespace');
    t.is(list.items[0]?.metadata?.name, 'seen /api/v1/namespaces Bearer token');
    t.deepEqual(proxy.addresses, [`127.0.0.1:${target.port}`]);
    agent.destroy();
  });
});

// ---- tunnel-client --------------------------------------------------------------------------

test('tunnel-client prints the body after "HTML Response:" through the mTLS proxy, and through gRPC', async (t) => {
  const pki = await pkiReady;
  const target = await httpTarget('c1');
  const proxy = await fakeConnectProxy({ pki });
  const uds = socketPath();
  const grpcProxy = await fakeGrpcProxy({ uds });
  await withServers([target, proxy, grpcProxy], async () => {
    const request = ['--request-host=127.0.0.1', `--request-port=${target.port}`, '--request-path=success'];
    const viaConnect = await runClient([`--proxy-port=${proxy.port}`, `--state-dir=${join(workDir, 'state')}`, '--test-requests=2', '--test-delay=10ms', ...request]);
    t.is(viaConnect.code, 0, viaConnect.stderr);
    t.is(viaConnect.stdout, 'HTML Response:\nc1 GET /success\nHTML Response:\nc1 GET /success\n');
    t.is(proxy.addresses.length, 2, 'one tunnel per request');

    const viaGrpc = await runClient(['--mode=grpc', `--proxy-uds=${uds}`, ...request]);
    t.is(viaGrpc.code, 0, viaGrpc.stderr);
    t.is(viaGrpc.stdout, 'HTML Response:\nc1 GET /success\n');
  });
});

test('tunnel-client over https verifies the target against --request-ca-cert, and only then', async (t) => {
  const pki = await pkiReady;
  const stranger = await strangerPkiReady;
  const target = await httpsTarget(pki, (req, res) => res.end(`secure ${req.url}`));
  const uds = socketPath();
  const proxy = await fakeGrpcProxy({ uds });
  await withServers([target, proxy], async () => {
    const request = ['--mode=grpc', `--proxy-uds=${uds}`, '--request-proto=https', '--request-host=localhost', `--request-port=${target.port}`, '--request-path=/s'];
    const verified = await runClient([...request, `--request-ca-cert=${pki.caCert}`]);
    t.is(verified.code, 0, verified.stderr);
    t.is(verified.stdout, 'HTML Response:\nsecure /s\n');
    const unverified = await runClient(request);
    t.is(unverified.code, 0, unverified.stderr);
    t.is(unverified.stdout, 'HTML Response:\nsecure /s\n');
    const wrongCa = await runClient([...request, `--request-ca-cert=${stranger.caCert}`]);
    t.is(wrongCa.code, 1);
    t.regex(wrongCa.stderr, new RegExp(`^tunnel-client: GET https://localhost:${target.port}/s failed: the certificate of https://localhost:${target.port} did not verify`));
  });
});

test('tunnel-client exits 1 with the proxy\'s error text, and 2 on an unknown flag', async (t) => {
  const pki = await pkiReady;
  const proxy = await fakeConnectProxy({ pki, refuse: { status: 500, message: 'Internal Server Error', body: NO_AGENT_BODY } });
  await withServers([proxy], async () => {
    const refused = await runClient([
      `--proxy-port=${proxy.port}`, `--ca-cert=${pki.caCert}`, `--client-cert=${pki.clientCert}`, `--client-key=${pki.clientKey}`, '--request-host=c1',
    ]);
    t.is(refused.code, 1);
    t.is(refused.stdout, '');
    t.is(refused.stderr, `tunnel-client: GET http://c1:8000/success failed: proxy 127.0.0.1:${proxy.port} refused CONNECT c1:8000: 500 Internal Server Error: ${NO_AGENT_BODY}\n`);
  });
  const unknown = await runClient(['--no-such-flag']);
  t.is(unknown.code, 2);
  t.regex(unknown.stderr, /^tunnel-client: .*--no-such-flag/);
  const partial = await runClient([`--ca-cert=${join(workDir, 'ca.crt')}`]);
  t.is(partial.code, 2);
  t.regex(partial.stderr, /give all three of --ca-cert, --client-cert and --client-key/);
});

// ---- helpers ----------------------------------------------------------------------------------

/** Unix-socket handles of this process (the gRPC client's connection among them). */
function pipeCount(): number {
  return process.getActiveResourcesInfo().filter((name) => name === 'PipeWrap').length;
}

/** Sends a minimal HTTP request over a raw tunneled connection and checks the answer. */
async function echoesHttp(conn: Duplex): Promise<boolean> {
  let text = '';
  const done = new Promise<void>((resolve) => {
    conn.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      if (text.includes('t GET /raw')) resolve();
    });
  });
  conn.write('GET /raw HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
  await bounded(done, 'the HTTP answer');
  return text.startsWith('HTTP/1.1 200');
}
