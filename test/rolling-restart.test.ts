/**
 * A rolling restart of three servers (--server-count=3) behind round-robin balancers, one for
 * the agent port and one for the HTTP-CONNECT port, as a Deployment behind Services: each
 * server in turn gets SIGTERM, drains and exits, and a new one starts on the same ports,
 * while 50 long paced transfers and a steady stream of short dials run. No dial that was
 * accepted (200) is lost, every transfer comes back whole (length and sha256), and a dial
 * that is refused is refused with an HTTP status before it was accepted.
 */
import test from 'ava';
import net from 'node:net';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { ProxyError, dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';
import { GrpcChannel } from '../lib/client/grpc-channel.js';
import { echoTarget, echoed, metric, run, sha256, startAgent, startServer, unusedPort, workspace, type ServerHandle } from './helpers/system.js';

/**
 * A TCP balancer on 127.0.0.1: each new connection goes to the next backend in turn, and to
 * the one after when a backend refuses the connection (as a Service drops an endpoint that
 * is gone).
 */
async function roundRobin(ports: number[]): Promise<{ port: number; close(): void }> {
  let next = 0;
  const sockets = new Set<net.Socket>();
  const track = (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  };
  const server = net.createServer((client) => {
    track(client);
    client.pause();
    const attempt = (left: number) => {
      const backend = net.connect({ host: '127.0.0.1', port: ports[next++ % ports.length] });
      let connected = false;
      backend.once('connect', () => {
        connected = true;
        track(backend);
        backend.on('error', () => client.destroy());
        client.on('error', () => backend.destroy());
        backend.on('close', () => client.destroy());
        client.on('close', () => backend.destroy());
        client.pipe(backend).pipe(client);
        client.resume();
      });
      backend.once('error', () => {
        if (connected) return;
        if (left > 1) attempt(left - 1);
        else client.destroy();
      });
    };
    client.on('error', () => undefined);
    attempt(ports.length);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => { for (const s of sockets) s.destroy(); server.close(); },
  };
}

/** Writes `payload` in `chunk`-sized pieces every `everyMs`, reads the echo; resolves with its length and sha256. */
function pacedExchange(socket: net.Socket, payload: Buffer, chunk: number, everyMs: number): Promise<{ length: number; sha: string }> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let length = 0;
    let offset = 0;
    const timer = setInterval(() => {
      if (offset >= payload.length) return clearInterval(timer);
      socket.write(payload.subarray(offset, offset + chunk));
      offset += chunk;
    }, everyMs);
    const fail = (err: Error) => {
      clearInterval(timer);
      reject(err);
    };
    socket.on('data', (data: Buffer) => {
      hash.update(data);
      length += data.length;
      if (length >= payload.length) {
        clearInterval(timer);
        resolve({ length, sha: hash.digest('hex') });
      }
    });
    socket.once('error', fail);
    socket.once('close', () => { if (length < payload.length) fail(new Error(`the connection closed after ${length} of ${payload.length} bytes`)); });
  });
}

const TRANSFERS = 50;
const TRANSFER_BYTES = 4 * 1024 * 1024;

test('a rolling restart of three servers loses no accepted dial and no byte of 50 long transfers', async (t) => {
  t.timeout(300_000);
  const ws = await workspace();
  const target = await echoTarget();
  const agentPorts = [await unusedPort(), await unusedPort(), await unusedPort()];
  const connectPorts = [await unusedPort(), await unusedPort(), await unusedPort()];
  const serverArgs = (i: number) => ['--server-count=3', `--server-id=s${i}`, `--agent-port=${agentPorts[i]}`, `--server-port=${connectPorts[i]}`, '--drain-timeout=60s'];
  const servers: ServerHandle[] = [];
  for (let i = 0; i < 3; i++) servers.push(await startServer(ws, serverArgs(i), `s${i}`));
  const agentBalancer = await roundRobin(agentPorts);
  const clientBalancer = await roundRobin(connectPorts);
  const agent = run('tunnel-agent', [
    `--state-dir=${ws.dir}`, '--cluster-name=cluster-a', '--host-alias=cluster-a=127.0.0.1', '--health-port=off',
    `--tunnelserver-addr=127.0.0.1:${agentBalancer.port}`,
  ]);
  const tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
  const dial = () => dialHttpConnect({ host: '127.0.0.1', port: clientBalancer.port, tls }, `cluster-a:${target.port}`);
  const refusals: Error[] = [];
  const lost: string[] = [];
  let shortAccepted = 0;
  let shortIntact = 0;
  try {
    for (let i = 0; i < 3; i++) await agent.waitFor(new RegExp(`connected to tunnel server serverID=s${i} serverCount=3`), 30_000);

    /** Dials until accepted (a refusal is recorded), then runs `use` on the connection. */
    const accepted = async <T>(use: (socket: net.Socket) => Promise<T>, what: string): Promise<T | undefined> => {
      for (;;) {
        let socket: net.Socket;
        try {
          socket = await dial();
        } catch (err) {
          refusals.push(err as Error);
          await sleep(100);
          continue;
        }
        try {
          return await use(socket);
        } catch (err) {
          lost.push(`${what}: ${(err as Error).message}`);
          return undefined;
        } finally {
          socket.destroy();
        }
      }
    };

    let restarting = true;
    const shortDials = (async () => {
      while (restarting) {
        const payload = randomBytes(16 * 1024);
        const result = await accepted((socket) => pacedExchange(socket, payload, payload.length, 1), 'short dial');
        shortAccepted++;
        if (result?.length === payload.length && result.sha === sha256(payload)) shortIntact++;
        await sleep(50);
      }
    })();
    const transfers = Array.from({ length: TRANSFERS }, async (_, i) => {
      await sleep(i * 400);
      const payload = randomBytes(TRANSFER_BYTES);
      const result = await accepted((socket) => pacedExchange(socket, payload, 32 * 1024, 40), `transfer ${i}`);
      return result !== undefined && result.length === payload.length && result.sha === sha256(payload);
    });

    await sleep(2_000);
    for (let i = 0; i < 3; i++) {
      const from = agent.output.length;
      t.is(await servers[i].stop(), 0, `server s${i} exits cleanly`);
      t.regex(servers[i].proc.output, /drained: every connection has finished/, `server s${i} drained before it exited`);
      servers[i] = await startServer(ws, serverArgs(i), `s${i}`);
      await agent.waitFor(new RegExp(`connected to tunnel server serverID=s${i}`), 30_000, from);
    }
    const intact = await Promise.all(transfers);
    restarting = false;
    await shortDials;

    t.deepEqual(lost, [], 'no accepted dial was lost');
    t.is(intact.filter(Boolean).length, TRANSFERS, 'every long transfer came back whole');
    t.is(shortIntact, shortAccepted, 'every short dial came back whole');
    t.true(shortAccepted > 0);
    for (const err of refusals) {
      t.true(err instanceof ProxyError, `a refusal is an HTTP status before 200: ${err.message}`);
      if (err instanceof ProxyError) t.true(err.statusCode >= 500, err.message);
    }
    t.log(`${TRANSFERS} transfers of ${TRANSFER_BYTES} bytes and ${shortAccepted} short dials intact; ${refusals.length} dials refused during drains`);
  } finally {
    await agent.stop();
    agentBalancer.close();
    clientBalancer.close();
    for (const server of servers) await server.stop();
    await target.close();
    ws.cleanup();
  }
});

test('a gRPC channel through a balancer takes its next dials to another server once its server drains', async (t) => {
  const ws = await workspace();
  const target = await echoTarget();
  const servers = [await startServer(ws, ['--server-id=g0', '--drain-timeout=60s'], 'g0'), await startServer(ws, ['--server-id=g1', '--drain-timeout=60s'], 'g1')];
  const agents = await Promise.all(servers.map((server) => startAgent(ws, server, 'cluster-a')));
  const balancer = await roundRobin(servers.map((s) => s.grpcPort!));
  const tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
  const channel = new GrpcChannel({ host: '127.0.0.1', port: balancer.port, tls });
  const address = `cluster-a:${target.port}`;
  const established = (s: ServerHandle) => metric(s.healthPort, 'konnectivity_network_proxy_server_established_connections');
  try {
    const held = await channel.dial(address);
    held.on('error', () => undefined); // a failure shows in the echoes
    t.true(await echoed(held, 64 * 1024));
    const first = (await established(servers[0])) === 1 ? 0 : 1;
    t.is(await established(servers[first]), 1, 'the channel\'s connection went to one of the servers');

    servers[first].proc.child.kill('SIGTERM');
    await servers[first].proc.waitFor(/draining: refusing new clients/);
    // Every new dial goes to the other server, none is refused; the held connection goes on.
    for (let i = 0; i < 10; i++) {
      const conn = await channel.dial(address);
      t.true(await echoed(conn, 32 * 1024), `dial ${i} during the drain`);
      conn.destroy();
    }
    t.is(channel.connectionsOpened, 2);
    t.true(await echoed(held, 1024 * 1024), 'the held connection during the drain');
    held.destroy();
    t.is(await servers[first].proc.exited, 0);
    t.regex(servers[first].proc.output, /drained: every connection has finished/);
  } finally {
    channel.close();
    balancer.close();
    for (const agent of agents) await agent.stop();
    for (const server of servers) await server.stop();
    tls.close();
    await target.close();
    ws.cleanup();
  }
});
