/**
 * The konnectivity series that operators scrape, after a real transfer through the binaries:
 * stream_packets_total{segment,packet_type} on both ends (each control packet the server
 * sends to the agent is one the agent received, and back), dial_duration_seconds as
 * histograms, the server's dial_failure_count{reason}, grpc_connections{service_method},
 * http_connections, the agent's endpoint_dial_failure_total{reason}, and the flow-control
 * series (window stalls, credit granted on one end and received on the other).
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { dialHttpConnect } from '../lib/client/http-connect-dialer.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';
import { echoTarget, eventually, exchange, httpGet, metric, sha256, startAgent, startServer, unusedPort, workspace } from './helpers/system.js';

const SERVER = 'konnectivity_network_proxy_server';
const AGENT = 'konnectivity_network_proxy_agent';

/** Every sample of a scrape, by its name and labels as printed (`name{a="b"}`). */
async function scrape(port: number): Promise<Map<string, number>> {
  const { body } = await httpGet(port, '/metrics');
  const samples = new Map<string, number>();
  for (const line of body.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return samples;
}

const packets = (prefix: string, segment: string, type: string) => `${prefix}_stream_packets_total{segment="${segment}",packet_type="${type}"}`;

test('konnectivity metric names, types and labels carry the values of a real transfer on server and agent', async (t) => {
  const ws = await workspace();
  // Small windows: a 4 MiB write waits for window updates, so stalls and credit show.
  const server = await startServer(ws, ['--connection-window=65536']);
  const agent = await startAgent(ws, server, 'cluster-a', ['--connection-window=65536']);
  const target = await echoTarget();
  const tls = await FileTlsSource.load({ ca: ws.pki.caCert, cert: ws.pki.clientCert, key: ws.pki.clientKey, role: 'test client' });
  const dial = (address: string) => dialHttpConnect({ host: '127.0.0.1', port: server.connectPort, tls }, address);
  let socket: Socket | undefined;
  try {
    const { body } = await httpGet(server.healthPort, '/metrics');
    for (const [name, type] of [
      ['dial_duration_seconds', 'histogram'], ['dial_failure_count', 'counter'], ['stream_packets_total', 'counter'], ['grpc_connections', 'gauge'],
      ['http_connections', 'gauge'], ['ready_backend_connections', 'gauge'], ['pending_backend_dials', 'gauge'], ['established_connections', 'gauge'],
      ['flow_control_window_stalls_total', 'counter'], ['flow_control_credit_granted_bytes_total', 'counter'],
    ]) t.true(body.includes(`# TYPE ${SERVER}_${name} ${type}\n`), `${name} is a ${type}`);
    const agentBody = (await httpGet(agent.healthPort, '/metrics')).body;
    for (const [name, type] of [['dial_duration_seconds', 'histogram'], ['endpoint_dial_failure_total', 'counter'], ['stream_packets_total', 'counter'], ['open_endpoint_connections', 'gauge'], ['open_server_connections', 'gauge']]) {
      t.true(agentBody.includes(`# TYPE ${AGENT}_${name} ${type}\n`), `agent ${name} is a ${type}`);
    }

    const payload = randomBytes(4 * 1024 * 1024);
    socket = await dial(`cluster-a:${target.port}`);
    t.is(await exchange(socket, payload, payload.length), sha256(payload), 'the echo came back whole');

    let s = await scrape(server.healthPort);
    let a = await scrape(agent.healthPort);
    t.is(s.get(`${SERVER}_grpc_connections{service_method="Connect"}`), 1, 'one agent stream');
    t.is(s.get(`${SERVER}_grpc_connections{service_method="Proxy"}`), 0);
    t.is(s.get(`${SERVER}_http_connections`), 1, 'the HTTP-CONNECT tunnel is open');
    t.is(s.get(`${SERVER}_established_connections`), 1);
    t.is(s.get(`${SERVER}_ready_backend_connections`), 1);
    t.is(s.get(`${SERVER}_dial_duration_seconds_count`), 1, 'one dial observed');
    t.is(s.get(`${SERVER}_dial_duration_seconds_bucket{le="+Inf"}`), 1);
    t.true(s.has(`${SERVER}_dial_duration_seconds_bucket{le="0.005"}`), 'the reference\'s buckets');
    t.true(s.get(`${SERVER}_dial_duration_seconds_sum`)! > 0);
    t.is(a.get(`${AGENT}_dial_duration_seconds_count`), 1);
    t.true(a.has(`${AGENT}_dial_duration_seconds_bucket{le="30"}`));
    t.is(s.get(packets(SERVER, 'to_agent', 'DIAL_REQ')), 1);
    t.is(s.get(packets(SERVER, 'from_agent', 'DIAL_RSP')), 1);
    t.is(a.get(packets(AGENT, 'to_agent', 'DIAL_REQ')), 1, 'the agent received the one DIAL_REQ');
    t.is(a.get(packets(AGENT, 'from_agent', 'DIAL_RSP')), 1);
    t.true(s.get(packets(SERVER, 'to_agent', 'DATA'))! > 0);
    t.true(s.get(packets(SERVER, 'from_agent', 'DATA'))! > 0);
    t.true(s.get(`${SERVER}_flow_control_window_stalls_total`)! > 0, 'a 4 MiB write waited for a 16 KiB window');
    t.true(a.get(`${AGENT}_flow_control_window_stalls_total`)! > 0, 'so did the echo');

    socket.destroy();
    socket = undefined;
    await eventually(async () => await metric(server.healthPort, `${SERVER}_established_connections`) === 0
      && await metric(agent.healthPort, `${AGENT}_open_endpoint_connections`) === 0, 10_000, 'the connection closed on both ends');
    // What one end sent the other received: every control packet, and every byte of window.
    await eventually(async () => {
      s = await scrape(server.healthPort);
      a = await scrape(agent.healthPort);
      return s.get(`${SERVER}_flow_control_credit_granted_bytes_total`) === a.get(`${AGENT}_flow_control_credit_received_bytes_total`)
        && a.get(`${AGENT}_flow_control_credit_granted_bytes_total`) === s.get(`${SERVER}_flow_control_credit_received_bytes_total`);
    }, 10_000, 'window credit granted by one end is received by the other');
    t.true(s.get(`${SERVER}_flow_control_credit_granted_bytes_total`)! > 0);
    t.true(a.get(`${AGENT}_flow_control_credit_granted_bytes_total`)! > 0);
    for (const type of ['DIAL_REQ', 'CLOSE_REQ', 'WINDOW_UPDATE', 'DIAL_CLS']) {
      t.is(a.get(packets(AGENT, 'to_agent', type)), s.get(packets(SERVER, 'to_agent', type)), `${type} to the agent`);
    }
    for (const type of ['DIAL_RSP', 'CLOSE_RSP', 'WINDOW_UPDATE']) {
      t.is(s.get(packets(SERVER, 'from_agent', type)), a.get(packets(AGENT, 'from_agent', type)), `${type} from the agent`);
    }
    t.is(s.get(packets(SERVER, 'to_agent', 'CLOSE_REQ'))! + s.get(packets(SERVER, 'from_agent', 'CLOSE_RSP'))!, 2, 'one close and its answer');
    t.true(s.get(packets(SERVER, 'to_agent', 'WINDOW_UPDATE'))! > 0);

    // Failures, by reason.
    await t.throwsAsync(dial('cluster-nowhere:80'), undefined, 'no agent serves cluster-nowhere');
    await eventually(async () => await metric(server.healthPort, `${SERVER}_dial_failure_count{reason="no_agent"}`) === 1, 5_000, 'no_agent counted');
    await t.throwsAsync(dial(`cluster-a:${await unusedPort()}`), undefined, 'nothing listens there');
    await eventually(async () => (await scrape(server.healthPort)).get(`${SERVER}_dial_failure_count{reason="error_response"}`) === 1, 5_000, 'error_response counted');
    a = await scrape(agent.healthPort);
    t.is(a.get(`${AGENT}_endpoint_dial_failure_total{reason="unknown"}`), 1, 'the agent counts the refused dial');
    t.is(a.get(`${AGENT}_dial_duration_seconds_count`), 1, 'only successful dials are observed');
    t.is((await scrape(server.healthPort)).get(`${SERVER}_dial_duration_seconds_count`), 1);
    t.false([...(await scrape(server.healthPort)).keys()].some((k) => k.startsWith(`${SERVER}_stream_errors_total`)), 'no stream failed so far');

    // An agent that dies without a word: its stream fails on the server.
    await agent.proc.stop('SIGKILL');
    await eventually(async () => ((await scrape(server.healthPort)).get(`${SERVER}_stream_errors_total{segment="from_agent",code="Unknown",packet_type="Unknown"}`) ?? 0) >= 1,
      10_000, 'the failed agent stream is counted');
  } finally {
    socket?.destroy();
    await agent.stop();
    await server.stop();
    await target.close();
    ws.cleanup();
  }
});
