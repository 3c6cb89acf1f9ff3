/**
 * --log-format=json: every line that server and agent print in a whole run (start, a
 * transfer, a refused dial, debug lines, the signal and the stop) is one JSON object with
 * time, level, component and msg, and the fields of the event; usage errors too.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';
import { echoTarget, exchange, run, runToEnd, sha256, workspace, type Proc } from './helpers/system.js';

interface LogLine {
  time: string;
  level: string;
  component: string;
  msg: string;
  [field: string]: unknown;
}

/** Every line of the output, each parsed on its own (a line that is not JSON fails the test). */
function lines(proc: Proc | string): LogLine[] {
  const output = typeof proc === 'string' ? proc : proc.output;
  return output.split('\n').filter((line) => line !== '').map((line) => {
    try {
      return JSON.parse(line) as LogLine;
    } catch {
      throw new Error(`not a JSON line: ${line}`);
    }
  });
}

async function address(proc: Proc, service: string): Promise<number> {
  return Number((await proc.waitFor(new RegExp(`"msg":"listening","service":"${service}","address":"127\\.0\\.0\\.1:(\\d+)"`)))[1]);
}

test('with --log-format=json every line of a whole run of server and agent is a JSON object', async (t) => {
  const ws = await workspace();
  const target = await echoTarget();
  const server = run('tunnel-server', [
    `--state-dir=${ws.dir}`, '--bind-address=127.0.0.1', '--agent-port=0', '--server-port=0', '--reverse-proxy-port=0', '--health-port=0',
    '--log-format=json', '--log-level=debug',
  ]);
  let agent: Proc | undefined;
  try {
    const agentPort = await address(server, 'agent');
    const connectPort = await address(server, 'http-connect');
    agent = run('tunnel-agent', [
      `--state-dir=${ws.dir}`, '--cluster-name=cluster-a', `--tunnelserver-addr=127.0.0.1:${agentPort}`, '--health-port=0',
      '--host-alias=cluster-a=127.0.0.1', '--log-format=json', '--v=4',
    ]);
    await agent.waitFor(/"msg":"connected to tunnel server"/);
    const tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
    const socket = await dialHttpConnect({ host: '127.0.0.1', port: connectPort, tls }, `cluster-a:${target.port}`);
    const payload = randomBytes(1024 * 1024);
    t.is(await exchange(socket, payload, payload.length), sha256(payload));
    socket.destroy();
    await t.throwsAsync(dialHttpConnect({ host: '127.0.0.1', port: connectPort, tls }, 'cluster-a:1'));
    await agent.waitFor(/"msg":"dial to target failed"/);
    // Not TLS: the server says so at debug level.
    const plain = net.connect({ host: '127.0.0.1', port: connectPort });
    plain.on('error', () => undefined);
    plain.write('GET / HTTP/1.1\r\n\r\n');
    await server.waitFor(/"level":"debug","component":"server","msg":"frontend TLS handshake failed"/);
    plain.destroy();
    t.is(await agent.stop(), 0);
    t.is(await server.stop(), 0);

    for (const [name, proc] of [['server', server], ['agent', agent]] as const) {
      const parsed = lines(proc);
      t.true(parsed.length > 5, `${name} logged`);
      for (const line of parsed) {
        t.false(Number.isNaN(Date.parse(line.time)), `${name}: time ${line.time}`);
        t.true(['debug', 'info', 'warn', 'error'].includes(line.level), `${name}: level ${line.level}`);
        t.is(typeof line.msg, 'string');
        t.is(typeof line.component, 'string');
      }
      t.true(parsed.some((l) => l.msg === 'received SIGTERM, shutting down' && l.level === 'info'), `${name}: the signal is a JSON line too`);
    }
    t.true(lines(server).some((l) => l.level === 'debug'), 'debug lines are JSON too');
    const server_ = lines(server);
    const connected = server_.find((l) => l.msg === 'agent connected');
    t.is(connected?.identifiers, 'host=cluster-a', 'fields are keys of the object');
    t.is(typeof connected?.agentID, 'string');
    const failed = lines(agent).find((l) => l.msg === 'dial to target failed');
    t.like(failed, { level: 'info', component: 'agent', address: 'cluster-a:1' });
    t.regex(String(failed?.reason), /connection refused/);
  } finally {
    await agent?.stop();
    await server.stop();
    await target.close();
    ws.cleanup();
  }
});

test('--log-format: a usage error is a JSON line, and an unknown format is refused in words', async (t) => {
  const ws = await workspace();
  try {
    const bad = await runToEnd('tunnel-server', [`--state-dir=${ws.dir}`, '--log-format=json', '--server-count=some']);
    t.is(bad.code, 2);
    const errors = lines(bad.stderr).filter((l) => l.level === 'error');
    t.is(errors.length, 1);
    t.like(errors[0], { component: 'tunnel-server' });
    t.regex(errors[0].msg, /--server-count=some must be a whole number/);
    const unknown = await runToEnd('tunnel-agent', [`--state-dir=${ws.dir}`, '--cluster-name=c', '--log-format=yaml']);
    t.is(unknown.code, 2);
    t.regex(unknown.stderr, /--log-format=yaml is not a log format: give one of text, json/);
  } finally {
    ws.cleanup();
  }
});
