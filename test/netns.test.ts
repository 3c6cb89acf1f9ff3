/**
 * "No inbound network", enforced by the kernel: the managed cluster (its agent, a target and
 * its API double) runs in a network namespace with nothing but loopback. Its one way out is a
 * unix-socket relay to the tunnel server's agent port (socket paths are shared across network
 * namespaces; no address other than 127.0.0.1 is used on either side). The hub reaches the
 * cluster's target and API server only through the tunnel, and the cluster reaches a hub
 * service only through its agent's push listener.
 *
 * Needs root and iproute2 (ip netns); elsewhere the test says so and does not run.
 */
import test from 'ava';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';
import { MANAGED_PODS } from '../harness/managed-cluster.js';
import { BIN, Proc, exchange, runToEnd, sha256, startServer, workspace, type ServerHandle, type Workspace } from './helpers/system.js';

const execFileAsync = promisify(execFile);
const HARNESS = fileURLToPath(new URL('../harness/', import.meta.url));
const NS = `tunnel-test-${process.pid}`;
const PUSH_PORT = 18080;

function netnsUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'it needs root to create a network namespace';
  if (spawnSync('ip', ['-V']).status !== 0) return 'iproute2 (ip) is not installed';
  const add = spawnSync('ip', ['netns', 'add', NS]);
  if (add.status !== 0) return `ip netns add failed: ${add.stderr.toString().trim()}`;
  spawnSync('ip', ['netns', 'exec', NS, 'ip', 'link', 'set', 'lo', 'up']);
  return undefined;
}

const unavailable = netnsUnavailable();

/** A process inside the namespace. */
function runInNamespace(name: string, script: string, args: string[]): Proc {
  return new Proc(name, spawn('ip', ['netns', 'exec', NS, process.execPath, script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }));
}

let ws: Workspace;
let server: ServerHandle;
let hubService: http.Server;
const procs: Proc[] = [];
let managed: { echoPort: number; apiPort: number; kubeconfig: string };

if (unavailable) {
  test('the managed cluster in a network namespace of its own', (t) => {
    t.log(`not run: ${unavailable}`);
    t.pass();
  });
} else {
  test.before(async () => {
    ws = await workspace();
    // A hub service for push: it says which cluster the tunnel server named, and what it got.
    hubService = http.createServer((req, res) => {
      const hash = createHash('sha256');
      let length = 0;
      req.on('data', (c: Buffer) => { hash.update(c); length += c.length; });
      req.on('end', () => res.end(JSON.stringify({ cluster: req.headers['x-tunnel-cluster'], length, sha256: hash.digest('hex') })));
    });
    hubService.listen(0, '127.0.0.1');
    await once(hubService, 'listening');
    server = await startServer(ws, [`--norm-upstream=http://127.0.0.1:${(hubService.address() as net.AddressInfo).port}`]);
    const sock = join(ws.dir, 'agent-port.sock');
    const outside = new Proc('relay-outside', spawn(process.execPath, [join(HARNESS, 'uds-relay.js'), 'uds-to-tcp', sock, `127.0.0.1:${server.agentPort}`], { stdio: ['ignore', 'pipe', 'pipe'] }));
    procs.push(outside);
    await outside.waitFor(/relay ready/);
    const inside = runInNamespace('relay-inside', join(HARNESS, 'uds-relay.js'), ['tcp-to-uds', `127.0.0.1:${server.agentPort}`, sock]);
    procs.push(inside);
    await inside.waitFor(/relay ready/);
    const cluster = runInNamespace('managed-cluster', join(HARNESS, 'managed-cluster.js'), [ws.dir]);
    procs.push(cluster);
    managed = JSON.parse((await cluster.waitFor(/^\{.*\}$/m))[0]) as typeof managed;
    const agent = runInNamespace('agent', join(BIN, 'tunnel-agent.js'), [
      `--state-dir=${ws.dir}`, '--cluster-name=managed', `--tunnelserver-addr=127.0.0.1:${server.agentPort}`, '--host-alias=managed=127.0.0.1',
      `--push-listen=127.0.0.1:${PUSH_PORT}=norm`, '--health-port=off',
    ]);
    procs.push(agent);
    await agent.waitFor(/connected to tunnel server.*push=on/);
  });

  test.after.always(async () => {
    for (const proc of procs.reverse()) await proc.stop();
    await server?.stop();
    hubService?.close();
    spawnSync('ip', ['netns', 'del', NS]);
    ws?.cleanup();
  });

  test.serial('the namespace has loopback only, and the hub cannot reach into it', async (t) => {
    const links = spawnSync('ip', ['netns', 'exec', NS, 'ip', '-o', 'link']).stdout.toString().trim().split('\n');
    t.deepEqual(links.map((l) => l.split(':')[1].trim()), ['lo']);
    const direct = await new Promise<string>((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port: managed.echoPort });
      socket.once('connect', () => { socket.destroy(); resolve('connected'); });
      socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    });
    t.is(direct, 'ECONNREFUSED', 'the target is not reachable from the hub side except through the tunnel');
  });

  test.serial('the hub reaches the target inside through the tunnel, bytes whole', async (t) => {
    const tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
    const payloads = [randomBytes(4 * 1024 * 1024), randomBytes(777_777), randomBytes(1)];
    await Promise.all(payloads.map(async (payload) => {
      const socket = await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, `managed:${managed.echoPort}`);
      const digest = await exchange(socket, payload, payload.length);
      socket.destroy();
      t.is(digest, sha256(payload));
    }));
  });

  test.serial('tunnel-client --kubeconfig lists the pods of the API server inside', async (t) => {
    const result = await runToEnd('tunnel-client', [
      `--kubeconfig=${managed.kubeconfig}`, '--cluster-name=managed', '--all-namespaces',
      `--ca-cert=${ws.pki.caCert}`, `--client-cert=${ws.pki.clientCert}`, `--client-key=${ws.pki.clientKey}`,
      '--proxy-host=127.0.0.1', `--proxy-port=${server.connectPort}`,
    ]);
    t.is(result.code, 0, result.stderr);
    for (const pod of MANAGED_PODS) t.regex(result.stdout, new RegExp(`^${pod.namespace}\\s+${pod.name}\\s+Running`, 'm'));
  });

  test.serial('the cluster reaches a hub service only through its agent\'s push listener, bytes whole', async (t) => {
    const body = join(ws.dir, 'push-body');
    const payload = randomBytes(2 * 1024 * 1024);
    writeFileSync(body, payload);
    // Not spawnSync: the hub service answers from this process.
    const curl = await execFileAsync('ip', ['netns', 'exec', NS, 'curl', '--silent', '--show-error', '--max-time', '20', '--data-binary', `@${body}`, `http://127.0.0.1:${PUSH_PORT}/upload`]);
    const seen = JSON.parse(curl.stdout) as { cluster: string; length: number; sha256: string };
    t.is(seen.cluster, 'managed');
    t.is(seen.length, payload.length);
    t.is(seen.sha256, sha256(payload));
    const direct = await execFileAsync('ip', ['netns', 'exec', NS, 'curl', '--silent', '--max-time', '5', `http://127.0.0.1:${(hubService.address() as net.AddressInfo).port}/`]).then(() => 0, (err: { code?: number }) => err.code);
    t.is(direct, 7, 'curl cannot connect: the hub service is not reachable from inside except through the tunnel');
  });
}
