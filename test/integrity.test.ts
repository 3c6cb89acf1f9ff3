/**
 * Bytes are sacred: through the real binaries, many connections at once, each checked byte
 * for byte (length and sha256) where it ends. Every close races the data before it: targets
 * close right after their last write, clients half-close right after their last byte, slow
 * readers keep windows full while the closes arrive. Each way the tunnel can run (one
 * stream or two, flow control on or off, windows so small that every close races a window
 * update) and both frontends (HTTP-CONNECT over mTLS, gRPC over the unix socket) carry the
 * same mix, and afterwards no stray packet was seen and nothing is left open.
 */
import test from 'ava';
import {
  workspace, startServer, startAgent, eventually, metric, type Workspace,
} from './helpers/system.js';
import { transferTarget, transferPlans, runTransfer, settleUploads, damaged, type TransferTarget } from './helpers/transfer-target.js';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { dialGrpc } from '../lib/client/grpc-dialer.js';
import { FileTlsSource, type TlsSource } from '../lib/pki/tls-source.js';

const SERVER_METRIC = 'konnectivity_network_proxy_server';
const AGENT_METRIC = 'konnectivity_network_proxy_agent';
/** Connections at once per round, and rounds per way of running: enough for a race to show. */
const CONNECTIONS = 90;
const ROUNDS = 2;
const MAX_BYTES = 2 * 1024 * 1024;

let ws: Workspace;
let target: TransferTarget;
let tls: TlsSource;

test.before(async () => {
  ws = await workspace();
  target = await transferTarget();
  tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
});

test.after.always(async () => {
  await target?.close();
  ws?.cleanup();
});

const ways: Array<{ name: string; server: string[]; agent: string[]; streams: string; flowControl: string }> = [
  { name: 'two streams, flow control on', server: [], agent: [], streams: 'split', flowControl: 'on' },
  { name: 'one stream, flow control on', server: [], agent: ['--single-stream'], streams: 'single', flowControl: 'on' },
  { name: 'two streams, flow control off', server: ['--connection-window=0'], agent: ['--connection-window=0'], streams: 'split', flowControl: 'off' },
  { name: 'one stream, flow control off', server: ['--connection-window=0'], agent: ['--connection-window=0', '--single-stream'], streams: 'single', flowControl: 'off' },
  // 64 KiB at most, 16 KiB to start: closes race window updates all the time.
  { name: 'two streams, 64 KiB windows', server: ['--connection-window=65536'], agent: ['--connection-window=65536'], streams: 'split', flowControl: 'on' },
];

for (const way of ways) {
  test.serial(`every byte arrives, whichever end closes first: ${way.name}`, async (t) => {
    const server = await startServer(ws, way.server, `server-${ways.indexOf(way)}`);
    const agent = await startAgent(ws, server, 'c1', way.agent);
    try {
      t.regex(agent.proc.output, new RegExp(`connected to tunnel server .*flowControl=${way.flowControl} streams=${way.streams}`));
      const address = `c1:${target.port}`;
      for (let round = 0; round < ROUNDS; round++) {
        const plans = transferPlans(CONNECTIONS, MAX_BYTES, `${ways.indexOf(way)}-${round}`);
        const results = await Promise.all(plans.map(async (plan, i) => {
          const socket = i % 2 === 0
            ? await dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, address)
            : await dialGrpc({ uds: server.grpcUds }, address);
          return runTransfer(socket, plan);
        }));
        await settleUploads(target, results);
        t.deepEqual(damaged(results), [], `round ${round + 1}: every connection's bytes, length and sha256`);
      }
      await eventually(async () => await metric(server.healthPort, `${SERVER_METRIC}_established_connections`) === 0
        && await metric(agent.healthPort, `${AGENT_METRIC}_open_endpoint_connections`) === 0
        && target.open === 0, 10_000, 'connection tables empty');
      t.is(await metric(server.healthPort, `${SERVER_METRIC}_stray_packets`), 0, 'no packet reached the server for a connection it did not have');
      t.is(await metric(agent.healthPort, `${AGENT_METRIC}_stray_packets`), 0, 'no packet reached the agent for a connection it did not have');
    } finally {
      await agent.stop();
      await server.stop();
    }
  });
}
