/**
 * Push mode, whole system: an add-on in a managed cluster reaches the hub's API server (the
 * API double) and a second hub service through the tunnel server's reverse-proxy port, and
 * through the agent's push listeners in its tunnel. Streaming responses arrive as they
 * happen, upgrades pass, bytes arrive whole, and bad input (no route, another cluster's
 * certificate, a certificate of another CA, request smuggling, oversized heads) is refused
 * without reaching an upstream or touching other traffic.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { CoreV1Api, KubeConfig, Watch, type V1ConfigMap } from '@kubernetes/client-node';
import { startKubeApi, type KubeApiDouble } from '../harness/kube-api/index.js';
import { localAgentCertificate } from '../lib/pki/local-pki.js';
import { createCa, issueCertificate } from '../lib/pki/certificates.js';
import { eventually, metric, sha256, startAgent, startServer, unusedPort, workspace, type AgentHandle, type ServerHandle, type Workspace } from './helpers/system.js';

const TOKEN = 'addon-token-5d1e0c';
let ws: Workspace;
let hub: KubeApiDouble;
let echo: EchoService;
let server: ServerHandle;
let agentA: AgentHandle;
let proxyPort: number;
let pushApi: number;
let pushEcho: number;
let pushNoRoute: number;
let certA: { cert: Buffer; key: Buffer };
let certB: { cert: Buffer; key: Buffer };
let ca: Buffer;

/** The second hub service: echoes what it got (path, headers, body digest), and raw bytes after an upgrade. */
interface EchoService {
  port: number;
  requests: { method?: string; url?: string; headers: http.IncomingHttpHeaders }[];
  close(): Promise<void>;
}

async function echoService(): Promise<EchoService> {
  const requests: EchoService['requests'] = [];
  const server = http.createServer((req, res) => {
    requests.push({ method: req.method, url: req.url, headers: req.headers });
    if (req.url?.endsWith('/stream')) {
      // A long poll: three chunks a while apart, each to be seen before the next is sent.
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      let n = 0;
      const tick = setInterval(() => {
        res.write(`chunk ${n}\n`);
        if (++n === 3) {
          clearInterval(tick);
          res.end();
        }
      }, 300);
      return;
    }
    const hash = createHash('sha256');
    let length = 0;
    req.on('data', (chunk: Buffer) => { hash.update(chunk); length += chunk.length; });
    req.on('end', () => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ url: req.url, headers: req.headers, length, sha256: hash.digest('hex') }));
    });
  });
  server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket) => {
    requests.push({ method: req.method, url: req.url, headers: req.headers });
    socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n');
    socket.pipe(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    requests,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

function pushPort(agent: AgentHandle, route: string): Promise<number> {
  return agent.proc.waitFor(new RegExp(`service=push address=\\S+:(\\d+) route=${route}\\b`)).then((m) => Number(m[1]));
}

test.before(async () => {
  ws = await workspace();
  hub = await startKubeApi();
  hub.objects.put('', 'namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'addons' } });
  hub.addToken(TOKEN, { username: 'addon', groups: ['system:authenticated'] });
  hub.grant({ user: 'addon' }, [{ verbs: ['get', 'list', 'watch', 'create'], apiGroups: [''], resources: ['configmaps'], namespaces: ['addons'] }]);
  echo = await echoService();
  const hubCa = join(ws.dir, 'hub-ca.crt');
  writeFileSync(hubCa, hub.caPem);
  const routes = join(ws.dir, 'routes.json');
  writeFileSync(routes, JSON.stringify({
    routes: [{ name: 'echo', prefix: '/v1/echo', upstream: `http://127.0.0.1:${echo.port}/base`, clusters: ['cluster-a'] }],
  }));
  server = await startServer(ws, [`--hub-apiserver=${hub.url}`, `--hub-apiserver-ca=${hubCa}`, `--reverse-proxy-routes=${routes}`, '--request-head-timeout=2s']);
  proxyPort = Number((await server.proc.waitFor(/service=reverse-proxy address=\S+:(\d+)/))[1]);
  agentA = await startAgent(ws, server, 'cluster-a', ['--push-listen=127.0.0.1:0=apiserver', '--push-listen=127.0.0.1:0=echo', '--push-listen=127.0.0.1:0=nowhere']);
  [pushApi, pushEcho, pushNoRoute] = await Promise.all([pushPort(agentA, 'apiserver'), pushPort(agentA, 'echo'), pushPort(agentA, 'nowhere')]);
  await agentA.proc.waitFor(/connected to tunnel server.* push=on/);
  const read = async (cluster: string) => {
    const paths = await localAgentCertificate(ws.dir, cluster);
    return { cert: readFileSync(paths.cert), key: readFileSync(paths.key) };
  };
  certA = await read('cluster-a');
  certB = await read('cluster-b');
  ca = readFileSync(ws.pki.caCert);
});

test.after.always(async () => {
  await agentA?.stop();
  await server?.stop();
  await hub?.close();
  await echo?.close();
  ws?.cleanup();
});

/** client-node as an add-on uses it: the reverse proxy (or a push listener) as its API server, its own token. */
function addonConfig(server: string, cert?: { cert: Buffer; key: Buffer }): KubeConfig {
  const config = new KubeConfig();
  config.loadFromOptions({
    // client-node takes an http:// server only with skipTLSVerify set (there is no TLS to verify on it).
    clusters: [{ name: 'hub', server, caData: ca.toString('base64'), skipTLSVerify: server.startsWith('http:') }],
    users: [{ name: 'addon', token: TOKEN, ...(cert ? { certData: cert.cert.toString('base64'), keyData: cert.key.toString('base64') } : {}) }],
    contexts: [{ name: 'hub', cluster: 'hub', user: 'addon' }],
    currentContext: 'hub',
  });
  return config;
}

interface Reply { status: number; headers: http.IncomingHttpHeaders; body: Buffer }

/** A request on the reverse-proxy port, with a client certificate or none. */
function proxyRequest(path: string, options: { cert?: { cert: Buffer; key: Buffer }; method?: string; body?: Buffer; headers?: Record<string, string> } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1', port: proxyPort, path, method: options.method ?? 'GET', ca, ...options.cert, headers: options.headers, agent: false,
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

/** A request on a push listener (plain HTTP in the managed cluster). */
function pushRequest(port: number, path: string, options: { method?: string; body?: Buffer } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: options.method ?? 'GET', agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

/** Raw bytes to the reverse-proxy port over TLS; resolves with everything the server sent before it closed. */
function rawProxy(bytes: string | Buffer, cert = certA): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port: proxyPort, ca, ...cert, servername: 'localhost' }, () => socket.end(bytes));
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    socket.on('error', reject);
  });
}

for (const mode of ['reverse-proxy port', 'push listener'] as const) {
  const apiServer = () => mode === 'reverse-proxy port' ? `https://127.0.0.1:${proxyPort}` : `http://127.0.0.1:${pushApi}`;
  const cert = () => mode === 'reverse-proxy port' ? certA : undefined;

  test.serial(`${mode}: an add-on uses the hub's API server through the tunnel server, with its own token`, async (t) => {
    const core = addonConfig(apiServer(), cert()).makeApiClient(CoreV1Api);
    const name = `made-through-${mode.replace(/ /g, '-')}`;
    await core.createNamespacedConfigMap({ namespace: 'addons', body: { metadata: { name }, data: { via: mode } } });
    t.is((hub.objects.get('', 'configmaps', name, 'addons') as V1ConfigMap).data?.via, mode);
    const list = await core.listNamespacedConfigMap({ namespace: 'addons' });
    t.true(list.items.some((c) => c.metadata?.name === name));
    // The API server saw the add-on's own credential, not the tunnel's.
    const last = hub.requests.filter((r) => r.path.startsWith('/api/v1/namespaces/addons/configmaps')).at(-1)!;
    t.is(last.user, 'addon');
    const denied = await t.throwsAsync(core.listNamespacedConfigMap({ namespace: 'kube-system' }));
    t.regex(String(denied?.message), /403|forbidden/i);
  });

  test.serial(`${mode}: a watch delivers each event as it happens`, async (t) => {
    const watch = new Watch(addonConfig(apiServer(), cert()));
    const seen: { type: string; name: string; at: number }[] = [];
    const request = await watch.watch('/api/v1/namespaces/addons/configmaps', { resourceVersion: '0' }, (type, obj: V1ConfigMap) => {
      seen.push({ type, name: obj.metadata!.name!, at: Date.now() });
    }, () => undefined);
    try {
      const names = ['w1', 'w2', 'w3'].map((n) => `${n}-${mode === 'push listener' ? 'push' : 'port'}`);
      for (const name of names) {
        const put = Date.now();
        hub.objects.put('', 'configmaps', { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, namespace: 'addons' } });
        // Seen before the next one is made: the stream is not buffered until it ends.
        await eventually(() => seen.some((e) => e.name === name && e.type === 'ADDED'), 5_000, `the ADDED event of ${name}`);
        t.true(seen.find((e) => e.name === name)!.at >= put);
      }
    } finally {
      request.abort();
    }
  });

  test.serial(`${mode}: a second hub service gets the body whole, the path under its upstream, and forwarding headers`, async (t) => {
    const body = randomBytes(3 * 1024 * 1024 + 17);
    const reply = mode === 'reverse-proxy port'
      ? await proxyRequest('/v1/echo/upload?x=1', { cert: certA, method: 'POST', body, headers: { Connection: 'keep-alive, X-Drop-Me', 'X-Drop-Me': 'secret', 'X-Tunnel-Cluster': 'forged' } })
      : await pushRequest(pushEcho, '/upload?x=1', { method: 'POST', body });
    t.is(reply.status, 200, reply.body.toString());
    const seen = JSON.parse(reply.body.toString()) as { url: string; headers: http.IncomingHttpHeaders; length: number; sha256: string };
    t.is(seen.length, body.length);
    t.is(seen.sha256, sha256(body));
    t.is(seen.url, '/base/upload?x=1');
    t.is(seen.headers['x-tunnel-cluster'], 'cluster-a');
    t.regex(String(seen.headers.via), /1\.1 tunnel-server/);
    t.is(seen.headers['x-forwarded-proto'], mode === 'reverse-proxy port' ? 'https' : 'http');
    t.is(seen.headers['x-drop-me'], undefined, 'a header named in Connection is hop-by-hop');
    t.is(seen.headers.host, `127.0.0.1:${echo.port}`);
  });

  test.serial(`${mode}: a streamed response arrives chunk by chunk`, async (t) => {
    const arrivals: number[] = [];
    await new Promise<void>((resolve, reject) => {
      const onResponse = (res: http.IncomingMessage) => {
        res.on('data', () => arrivals.push(Date.now()));
        res.on('end', resolve);
      };
      const req = mode === 'reverse-proxy port'
        ? https.get({ host: '127.0.0.1', port: proxyPort, path: '/v1/echo/stream', ca, ...certA, agent: false }, onResponse)
        : http.get({ host: '127.0.0.1', port: pushEcho, path: '/stream', agent: false }, onResponse);
      req.on('error', reject);
    });
    t.true(arrivals.length >= 3, `${arrivals.length} reads`);
    t.true(arrivals.at(-1)! - arrivals[0] >= 400, 'the chunks came as the upstream sent them, not at once at the end');
  });

  test.serial(`${mode}: an upgraded connection carries bytes both ways`, async (t) => {
    const socket = mode === 'reverse-proxy port'
      ? tls.connect({ host: '127.0.0.1', port: proxyPort, ca, ...certA, servername: 'localhost' })
      : net.connect({ host: '127.0.0.1', port: pushEcho });
    await once(socket, mode === 'reverse-proxy port' ? 'secureConnect' : 'connect');
    const path = mode === 'reverse-proxy port' ? '/v1/echo/ws' : '/ws';
    socket.write(`GET ${path} HTTP/1.1\r\nHost: hub\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n`);
    const payload = randomBytes(1024 * 1024);
    let buffered = Buffer.alloc(0);
    const hash = createHash('sha256');
    let received = 0;
    let headDone = false;
    const done = new Promise<void>((resolve, reject) => {
      socket.on('data', (chunk: Buffer) => {
        if (!headDone) {
          buffered = Buffer.concat([buffered, chunk]);
          const end = buffered.indexOf('\r\n\r\n');
          if (end < 0) return;
          t.regex(buffered.subarray(0, end).toString(), /^HTTP\/1\.1 101/);
          headDone = true;
          socket.write(payload);
          chunk = buffered.subarray(end + 4);
        }
        hash.update(chunk);
        received += chunk.length;
        if (received >= payload.length) resolve();
      });
      socket.on('error', reject);
    });
    await done;
    socket.destroy();
    t.is(received, payload.length);
    t.is(hash.digest('hex'), sha256(payload));
  });
}

test.serial('a path with no route is 404, lists the routes, and reaches no upstream', async (t) => {
  const before = echo.requests.length;
  const apiBefore = hub.requests.length;
  for (const path of ['/v1/nothing', '/v1/norm/x', '/v1/echoes']) {
    const reply = await proxyRequest(path, { cert: certA });
    t.is(reply.status, 404, path);
    t.regex(reply.body.toString(), /no route for .* \(routes: .*\/ \(apiserver\).*\/v1\/echo \(echo\).*not configured: norm/);
  }
  t.is(echo.requests.length, before);
  t.is(hub.requests.length, apiBefore, '/v1 paths are never the API server\'s');
  const health = await proxyRequest('/v1/healthz');
  t.is(health.status, 200);
  t.is(health.body.toString(), 'ok');
});

test.serial('allow-lists: another cluster\'s certificate, no certificate, and a certificate of another CA are refused', async (t) => {
  const before = echo.requests.length;
  const other = await proxyRequest('/v1/echo/x', { cert: certB });
  t.is(other.status, 403);
  t.regex(other.body.toString(), /route echo .* open to the clusters cluster-a only, not to cluster cluster-b/);
  const none = await proxyRequest('/v1/echo/x');
  t.is(none.status, 403);
  t.regex(none.body.toString(), /names no cluster/);
  const strangerCa = createCa('stranger');
  const stranger = issueCertificate(strangerCa, { commonName: 'tunnel:agent:cluster-a', organization: ['tunnel:agents'], usage: 'client' });
  const forged = await proxyRequest('/v1/echo/x', { cert: { cert: Buffer.from(stranger.certPem), key: Buffer.from(stranger.keyPem) } });
  t.is(forged.status, 401);
  t.regex(forged.body.toString(), /client certificate was not accepted/);
  t.is(echo.requests.length, before, 'no refused request reached the upstream');
  // The open API server route takes callers without a certificate (they bring a token).
  const core = addonConfig(`https://127.0.0.1:${proxyPort}`).makeApiClient(CoreV1Api);
  t.true((await core.listNamespacedConfigMap({ namespace: 'addons' })).items.length > 0);
});

test.serial('push to a route the server does not have gets 502 with the server\'s reason; the tunnel carries on', async (t) => {
  const reply = await pushRequest(pushNoRoute, '/anything');
  t.is(reply.status, 502);
  t.regex(reply.body.toString(), /tunnel server refused route nowhere: .*no route named "nowhere"/);
  const again = await pushRequest(pushEcho, '/after');
  t.is(again.status, 200);
});

test.serial('request smuggling, oversized heads and foreign certificates are refused before any upstream sees them, while another transfer goes on intact', async (t) => {
  // cluster-a's upload through its tunnel runs while the bad requests come in.
  const body = randomBytes(8 * 1024 * 1024);
  const upload = pushRequest(pushEcho, '/beside-bad-input', { method: 'POST', body });
  const before = echo.requests.filter((r) => r.url !== '/base/beside-bad-input').length;
  const smuggled = await rawProxy('POST /v1/echo/a HTTP/1.1\r\nHost: hub\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/echo/smuggled HTTP/1.1\r\nHost: hub\r\n\r\n');
  t.regex(smuggled, /^HTTP\/1\.1 400 /);
  const doubled = await rawProxy('POST /v1/echo/a HTTP/1.1\r\nHost: hub\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd');
  t.regex(doubled, /^HTTP\/1\.1 400 /);
  const big = await rawProxy(`GET /v1/echo/a HTTP/1.1\r\nHost: hub\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
  t.regex(big, /^HTTP\/1\.1 431 [\s\S]*larger than 16384 bytes/);
  const strangerCa = createCa('stranger');
  const stranger = issueCertificate(strangerCa, { commonName: 'tunnel:agent:cluster-a', organization: ['tunnel:agents'], usage: 'client' });
  const forged = await rawProxy('GET /v1/echo/a HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n', { cert: Buffer.from(stranger.certPem), key: Buffer.from(stranger.keyPem) });
  t.regex(forged, /^HTTP\/1\.1 401 /);
  const other = await rawProxy('GET /v1/echo/a HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n', certB);
  t.regex(other, /^HTTP\/1\.1 403 /);
  t.is(echo.requests.filter((r) => r.url !== '/base/beside-bad-input').length, before, 'no refused request reached the upstream');
  const seen = JSON.parse((await upload).body.toString()) as { length: number; sha256: string };
  t.is(seen.length, body.length);
  t.is(seen.sha256, sha256(body));
  const ok = await proxyRequest('/v1/echo/fine', { cert: certA });
  t.is(ok.status, 200);
  t.true(await metric(server.healthPort, 'konnectivity_network_proxy_server_reverse_proxy_requests_total') > 0);
});

test.serial('a push connection\'s bytes reach the hub while another cluster\'s agent stops and starts', async (t) => {
  const agentB = await startAgent(ws, server, 'cluster-b', ['--push-listen=127.0.0.1:0=echo']);
  const pushB = await pushPort(agentB, 'echo');
  await agentB.proc.waitFor(/push=on/);
  const refused = await pushRequest(pushB, '/b');
  t.is(refused.status, 403, 'cluster-b may not use the echo route, through its tunnel either');
  t.regex(refused.body.toString(), /not to cluster cluster-b/);
  const body = randomBytes(2 * 1024 * 1024);
  const upload = pushRequest(pushEcho, '/during', { method: 'POST', body });
  await agentB.stop();
  const reply = await upload;
  const seen = JSON.parse(reply.body.toString()) as { length: number; sha256: string };
  t.is(seen.length, body.length);
  t.is(seen.sha256, sha256(body));
});

test.serial('a server that takes no push streams (--accept-push=false, like a reference server): the listener answers 503, and the agent says so once per server across reconnects', async (t) => {
  const agentPort = await unusedPort();
  let plain = await startServer(ws, [`--agent-port=${agentPort}`, '--accept-push=false', '--server-id=no-push'], 'no-push');
  const agent = await startAgent(ws, plain, 'cluster-c', ['--push-listen=127.0.0.1:0=apiserver']);
  try {
    const port = await pushPort(agent, 'apiserver');
    const reply = await pushRequest(port, '/api');
    t.is(reply.status, 503);
    t.regex(reply.body.toString(), /no tunnel server has taken this agent's push stream/);
    await plain.stop();
    plain = await startServer(ws, [`--agent-port=${agentPort}`, '--accept-push=false', '--server-id=no-push'], 'no-push');
    await eventually(() => (agent.proc.output.match(/connected to tunnel server/g) ?? []).length >= 2, 20_000, 'the agent reconnected');
    t.is((agent.proc.output.match(/does not take push connections/g) ?? []).length, 1);
  } finally {
    await agent.stop();
    await plain.stop();
  }
});

/** Raw bytes to a push listener; resolves with what came back before the close, and when. */
function rawPush(port: number, bytes: string, more?: string): Promise<{ text: string; ms: number }> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const socket = net.connect({ host: '127.0.0.1', port }, () => {
      socket.write(bytes);
      if (more) setTimeout(() => socket.write(more), 200);
    });
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('close', () => resolve({ text: Buffer.concat(chunks).toString('latin1'), ms: Date.now() - started }));
    socket.on('error', reject);
  });
}

test.serial('pushed connections: a CONNECT is 405 and bytes after it harm nothing; half a request head is 408 after --request-head-timeout', async (t) => {
  const connect = await rawPush(pushApi, 'CONNECT a:1 HTTP/1.1\r\nHost: a\r\n\r\n', 'more bytes nobody reads');
  t.regex(connect.text, /^HTTP\/1\.1 405 /);
  const slow = await rawPush(pushEcho, 'GET /slow HT');
  t.regex(slow.text, /^HTTP\/1\.1 408 [\s\S]*did not arrive within 2000 ms/);
  t.true(slow.ms < 8_000, `closed after ${slow.ms} ms`);
  // The server is up and serving.
  const after = await pushRequest(pushEcho, '/after-bad-pushes');
  t.is(after.status, 200);
  t.is(server.proc.child.exitCode, null);
});
