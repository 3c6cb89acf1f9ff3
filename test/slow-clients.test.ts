/**
 * Slow and silent clients do not hold the server's frontends: a TCP client that never starts
 * its TLS handshake, a TLS client that never sends its request, and one that stops in the
 * middle of its CONNECT line are each cut off after --handshake-timeout or
 * --request-head-timeout (408 with the reason where a request had begun to come), on the
 * HTTP-CONNECT port and on the reverse-proxy port alike, while other clients are served.
 */
import test from 'ava';
import net from 'node:net';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';
import { echoTarget, exchange, httpGet, sha256, startAgent, startServer, workspace } from './helpers/system.js';

/** What a socket received until it closed, and after how long. */
function untilClosed(socket: net.Socket): Promise<{ text: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve) => {
    let text = '';
    socket.on('data', (chunk: Buffer) => { text += chunk.toString('latin1'); });
    socket.on('error', () => undefined);
    socket.on('close', () => resolve({ text, ms: Date.now() - started }));
  });
}

test('silent and slow clients are cut off after their time limits on the HTTP-CONNECT and reverse-proxy ports; others are served meanwhile', async (t) => {
  const ws = await workspace();
  const server = await startServer(ws, ['--handshake-timeout=1s', '--request-head-timeout=1s']);
  const target = await echoTarget();
  const agent = await startAgent(ws, server, 'cluster-a');
  try {
    const proxyPort = Number((await server.proc.waitFor(/service=reverse-proxy address=\S+:(\d+)/))[1]);
    const material = { ca: readFileSync(ws.pki.caCert), cert: readFileSync(ws.pki.clientCert), key: readFileSync(ws.pki.clientKey) };
    const secure = async (port: number) => {
      const socket = tls.connect({ host: '127.0.0.1', port, ...material, servername: 'localhost' });
      await new Promise<void>((resolve, reject) => { socket.once('secureConnect', resolve); socket.once('error', reject); });
      return socket;
    };
    for (const [name, port] of [['HTTP-CONNECT', server.connectPort], ['reverse proxy', proxyPort]] as const) {
      const silentTcp = untilClosed(net.connect({ host: '127.0.0.1', port }));
      const silentTls = await secure(port);
      const silent = untilClosed(silentTls);
      const partialTls = await secure(port);
      const partial = untilClosed(partialTls);
      partialTls.write('CONNECT cluster-a:443 HT');
      // Another client is served while those wait.
      if (name === 'HTTP-CONNECT') {
        const socket = await dialHttpConnect({ host: '127.0.0.1', port, tls: await FileTlsSource.load({ ...{ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey }, role: 'test client' }) }, `cluster-a:${target.port}`);
        const payload = randomBytes(1024 * 1024);
        t.is(await exchange(socket, payload, payload.length), sha256(payload));
        socket.destroy();
      }
      const [tcp, idle, slow] = await Promise.all([silentTcp, silent, partial]);
      for (const [what, result] of [['no handshake', tcp], ['no request', idle], ['half a request line', slow]] as const) {
        t.true(result.ms < 6_000, `${name}, ${what}: closed after ${result.ms} ms`);
      }
      t.regex(slow.text, /^HTTP\/1\.1 408 /, `${name}: ${slow.text}`);
      t.regex(slow.text, /did not arrive|in time/);
    }
    // Counted and said like the requests refused after parsing.
    const { body } = await httpGet(server.healthPort, '/metrics');
    t.regex(body, /http_connect_requests_total\{outcome="request_timeout"\} [1-9]/);
    const bad = untilClosed(await secure(server.connectPort));
    await new Promise((r) => setTimeout(r, 50));
    const garbage = await secure(server.connectPort);
    const refused = untilClosed(garbage);
    garbage.write('NOT HTTP AT ALL\r\n\r\n');
    t.regex((await refused).text, /^HTTP\/1\.1 400 /);
    await bad;
    t.regex((await httpGet(server.healthPort, '/metrics')).body, /http_connect_requests_total\{outcome="bad_request"\} [1-9]/);
    t.regex(server.proc.output, /refused a malformed request from a frontend client/);
  } finally {
    await agent.stop();
    await server.stop();
    await target.close();
    ws.cleanup();
  }
});

test('--handshake-timeout and --request-head-timeout must be durations longer than 0', async (t) => {
  const ws = await workspace();
  try {
    const { runToEnd } = await import('./helpers/system.js');
    const result = await runToEnd('tunnel-server', [`--state-dir=${ws.dir}`, '--request-head-timeout=0s']);
    t.is(result.code, 2);
    t.regex(result.stderr, /--request-head-timeout=0s must be longer than 0/);
  } finally {
    ws.cleanup();
  }
});
