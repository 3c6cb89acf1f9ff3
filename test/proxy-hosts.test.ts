/**
 * --proxy-server-host with several addresses and no balancer: the agent holds a stream to
 * the server behind each (even with --server-count=1 on each), retries an address that is
 * down with that address's own back-off while the others carry on, and takes the server
 * back when it returns; two addresses of one server make one stream.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';
import { echoTarget, exchange, run, runToEnd, sha256, startServer, unusedPort, workspace } from './helpers/system.js';

function agentArgs(dir: string, hosts: string[]): string[] {
  return [`--state-dir=${dir}`, '--cluster-name=cluster-a', '--host-alias=cluster-a=127.0.0.1', '--health-port=off', ...hosts.map((h) => `--proxy-server-host=${h}`)];
}

test.serial('an agent holds a stream through each of two comma-separated addresses, retries the one that is down on its own, and takes it back', async (t) => {
  const ws = await workspace();
  const target = await echoTarget();
  const portTwo = await unusedPort();
  const one = await startServer(ws, ['--server-id=one'], 'one');
  let two = await startServer(ws, [`--agent-port=${portTwo}`, '--server-id=two'], 'two');
  const agent = run('tunnel-agent', agentArgs(ws.dir, [`127.0.0.1:${one.agentPort},127.0.0.1:${portTwo}`]));
  try {
    await agent.waitFor(/connected to tunnel server serverID=one serverCount=1/);
    await agent.waitFor(/connected to tunnel server serverID=two serverCount=1/);
    const tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
    const through = async (port: number, size: number) => {
      const socket = await dialHttpConnect({ host: '127.0.0.1', port, tls }, `cluster-a:${target.port}`);
      const payload = randomBytes(size);
      t.is(await exchange(socket, payload, payload.length), sha256(payload));
      socket.destroy();
    };
    await through(one.connectPort, 2 * 1024 * 1024);
    await through(two.connectPort, 2 * 1024 * 1024);

    // Taken before the stop: the agent may print the loss before the server's exit reaches us.
    const from = agent.output.length;
    await two.stop();
    await agent.waitFor(/lost the stream to the tunnel server; reconnecting serverID=two/, 10_000, from);
    // Two failed attempts at the address that is down, each followed by a longer wait.
    const retries = new RegExp(`cannot connect to the tunnel server; retrying server=127\\.0\\.0\\.1:${portTwo} in=(\\d+)ms`, 'g');
    await agent.waitFor(new RegExp(`${retries.source}[\\s\\S]*${retries.source}`), 20_000, from);
    const delays = [...agent.output.slice(from).matchAll(retries)].map((m) => Number(m[1]));
    t.true(delays[1] > delays[0], `back-off grows: ${delays.join(', ')}`);
    t.notRegex(agent.output.slice(from), new RegExp(`retrying server=127\\.0\\.0\\.1:${one.agentPort}`), 'the address that is up is not retried');
    await through(one.connectPort, 2 * 1024 * 1024);

    two = await startServer(ws, [`--agent-port=${portTwo}`, '--server-id=two'], 'two');
    await agent.waitFor(/connected to tunnel server serverID=two/, 20_000, from);
    await through(two.connectPort, 2 * 1024 * 1024);
    t.is(agent.output.match(/connected to tunnel server serverID=one/g)?.length, 1, 'the stream to server one stayed up all along');
  } finally {
    await agent.stop();
    await one.stop();
    await two.stop();
    await target.close();
    ws.cleanup();
  }
});

test.serial('two addresses of one server make one stream, without retries', async (t) => {
  const ws = await workspace();
  const server = await startServer(ws, ['--server-id=only']);
  const agent = run('tunnel-agent', agentArgs(ws.dir, [`127.0.0.1:${server.agentPort}`, `localhost:${server.agentPort}`]));
  try {
    await agent.waitFor(/connected to tunnel server serverID=only/);
    // Long enough for the second address to have been tried (attempts go every second).
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    t.is(agent.output.match(/connected to tunnel server/g)?.length, 1);
    t.notRegex(agent.output, /cannot connect to the tunnel server/);
  } finally {
    await agent.stop();
    await server.stop();
    ws.cleanup();
  }
});

test('--proxy-server-host with an empty or malformed entry is a usage error', async (t) => {
  const ws = await workspace();
  try {
    for (const bad of ['127.0.0.1:10262,,127.0.0.2', 'host:port:extra', 'host:99999']) {
      const result = await runToEnd('tunnel-agent', agentArgs(ws.dir, [bad]));
      t.is(result.code, 2, `${bad}: ${result.stderr}`);
      t.regex(result.stderr, /--proxy-server-host/);
    }
  } finally {
    ws.cleanup();
  }
});
