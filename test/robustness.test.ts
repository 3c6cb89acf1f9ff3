/**
 * Robustness of the real binaries: bad input gets a clear answer, nothing crashes, nothing
 * leaks. One workspace, server and agent (`c1`) are shared by every test, so the tests run
 * serially and the last one checks that everything before it left nothing behind.
 */
import { localAgentCertificate } from '../lib/pki/local-pki.js';
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import http2 from 'node:http2';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import {
  PacketType, closeResponse, dataPacket, dialResponse,
  type DialRequestPacket, type KnownPacket, type Packet,
} from '../lib/wire/index.js';
import { AGENT_CONNECT_PATH, MD_AGENT_ID, MD_AGENT_IDENTIFIERS, MD_FLOW_CONTROL, MD_SERVER_COUNT, MD_SERVER_ID, PROXY_PATH } from '../lib/wire/protocol.js';
import { deserializePacket, serializePacket } from './helpers/grpc-services.js';
import { framePacket } from '../lib/transport/grpc-stream.js';
import {
  echoTarget, eventually, httpGet, httpTarget, metric, startAgent, startServer, unusedPort, workspace,
  type AgentHandle, type Proc, type ServerHandle, type Target, type Workspace,
} from './helpers/system.js';

const ESTABLISHED = 'HTTP/1.1 200 Connection Established';
const SERVER_METRIC = 'konnectivity_network_proxy_server';
const AGENT_METRIC = 'konnectivity_network_proxy_agent';

// ---- raw sockets -------------------------------------------------------------------------

/** An HTTP-CONNECT port (mTLS, with the client certificate unless `cert` is false) or a unix socket path (plain). */
function openSocket(ws: Workspace, where: number | string, cert = true): Duplex {
  const socket = typeof where === 'string'
    ? net.connect({ path: where })
    : tls.connect({
      host: '127.0.0.1', port: where, ca: readFileSync(ws.pki.caCert),
      ...(cert ? { cert: readFileSync(ws.pki.clientCert), key: readFileSync(ws.pki.clientKey) } : {}),
    });
  socket.on('error', () => {}); // resets are expected here; 'close' follows
  return socket;
}

interface Reply {
  statusLine: string;
  head: string;
  body: string;
  /** Still open after a 200 (paused, for the tunnel); closed otherwise. */
  socket: Duplex;
}

/**
 * Writes `request` and reads the answer: for a 200, up to the end of the head (the tunnel
 * stays open); for anything else, until the server closes the connection.
 */
function request(socket: Duplex, request: string | Buffer, timeoutMs = 5_000): Promise<Reply> {
  return new Promise((resolve, reject) => {
    let received = Buffer.alloc(0);
    let headEnd = -1;
    const reply = (): Reply => {
      const head = received.subarray(0, headEnd).toString();
      return { head, statusLine: head.split('\r\n')[0], body: received.subarray(headEnd + 4).toString(), socket };
    };
    const finish = () => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
    };
    const onData = (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (headEnd < 0) headEnd = received.indexOf('\r\n\r\n');
      if (headEnd >= 0 && received.subarray(0, headEnd).toString().startsWith(ESTABLISHED)) {
        finish();
        socket.pause();
        resolve(reply());
      }
    };
    const onClose = () => {
      finish();
      if (headEnd >= 0) resolve(reply());
      else reject(new Error(`the connection closed without a complete response: ${JSON.stringify(received.toString())}`));
    };
    const timer = setTimeout(() => {
      finish();
      socket.destroy();
      reject(new Error(`no complete response within ${timeoutMs} ms: ${JSON.stringify(received.toString())}`));
    }, timeoutMs);
    socket.on('data', onData);
    socket.on('close', onClose);
    socket.write(request);
  });
}

/** Sends CONNECT for `target` and reads the answer (see `request`). */
function rawConnect(ws: Workspace, where: number | string, target: string, options: { cert?: boolean; timeoutMs?: number } = {}): Promise<Reply> {
  return request(openSocket(ws, where, options.cert), `CONNECT ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`, options.timeoutMs);
}

/** Writes `bytes` (if the socket takes them) and collects what comes back until the socket closes. */
function sendUntilClosed(socket: Duplex, bytes: string | Buffer, timeoutMs = 5_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the connection stayed open for ${timeoutMs} ms; got ${JSON.stringify(Buffer.concat(chunks).toString())}`));
    }, timeoutMs);
    // The socket may have closed already, e.g. while the test waited for a process to exit.
    if (socket.closed) {
      clearTimeout(timer);
      resolve('');
      return;
    }
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString());
    });
    socket.resume();
    if (bytes.length > 0) socket.write(bytes);
  });
}

/** Reads exactly `n` bytes from an open tunnel. */
function readBytes(socket: Duplex, n: number, timeoutMs = 5_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let received = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length >= n) {
        clearTimeout(timer);
        socket.off('data', onData);
        socket.pause();
        resolve(received.toString());
      }
    };
    const timer = setTimeout(() => {
      socket.off('data', onData);
      reject(new Error(`got ${received.length} of ${n} bytes within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('data', onData);
    socket.resume();
  });
}

/** Resolves when the socket has closed; rejects after timeoutMs. */
async function closed(socket: Duplex, timeoutMs = 5_000): Promise<void> {
  await sendUntilClosed(socket, '', timeoutMs);
}

/** A whole request through the tunnel to an HTTP target: CONNECT, GET /whoami, the answer. */
async function tunnelGet(ws: Workspace, where: number | string, address: string): Promise<string> {
  const reply = await rawConnect(ws, where, address);
  if (reply.statusLine !== ESTABLISHED) throw new Error(`CONNECT ${address} answered ${JSON.stringify(reply.head + '\r\n\r\n' + reply.body)}`);
  return sendUntilClosed(reply.socket, 'GET /whoami HTTP/1.1\r\nHost: target\r\nConnection: close\r\n\r\n');
}

const isRunning = (proc: Proc) => proc.child.exitCode === null && proc.child.signalCode === null;

/** `promise`, or a rejection naming `what` after timeoutMs. */
function within<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${timeoutMs} ms`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Stops a binary with SIGTERM, and with SIGKILL if it has not exited after 5 s. */
function stop(handle: { proc: Proc }): Promise<unknown> {
  return within(handle.proc.stop(), 5_000, `${handle.proc.name} exit`).catch(() => handle.proc.stop('SIGKILL'));
}

// ---- a hand-driven agent -----------------------------------------------------------------

/** What the rogue agent writes: a packet, or bytes encoded by hand. */
type Outgoing = KnownPacket | Buffer;

/**
 * An agent speaking the protocol by hand over its own gRPC channel, as the reference agent
 * does (no flow-control key): it sends what a test tells it to and queues what it receives.
 */
class RogueAgent {
  readonly headers: Promise<grpc.Metadata>;
  /** The call's final status. */
  readonly ended: Promise<grpc.StatusObject>;
  private readonly inbox: Packet[] = [];
  private wake?: () => void;

  private constructor(private readonly client: grpc.Client, private readonly call: grpc.ClientDuplexStream<Outgoing, Packet>) {
    call.on('error', () => {}); // the status is read from `ended`
    call.on('data', (packet: Packet) => {
      this.inbox.push(packet);
      this.wake?.();
    });
    // Not events.once: it would reject on the call's 'error'.
    this.headers = new Promise((resolve) => call.once('metadata', resolve));
    this.ended = new Promise((resolve) => call.once('status', resolve));
  }

  static async connect(ws: Workspace, agentPort: number, host: string): Promise<RogueAgent> {
    const agent = await localAgentCertificate(ws.dir, host);
    const credentials = grpc.credentials.createSsl(readFileSync(ws.pki.caCert), readFileSync(agent.key), readFileSync(agent.cert));
    const client = new grpc.Client(`127.0.0.1:${agentPort}`, credentials, { 'grpc.use_local_subchannel_pool': 1 });
    const metadata = new grpc.Metadata();
    metadata.set(MD_AGENT_ID, `rogue-${randomUUID()}`);
    metadata.set(MD_AGENT_IDENTIFIERS, `host=${host}`);
    const serialize = (packet: Outgoing) => Buffer.isBuffer(packet) ? packet : serializePacket(packet);
    return new RogueAgent(client, client.makeBidiStreamRequest(AGENT_CONNECT_PATH, serialize, deserializePacket, metadata));
  }

  send(packet: Outgoing): void {
    this.call.write(packet);
  }

  /** The next packet from the server, or undefined if none comes within timeoutMs. */
  async next(timeoutMs = 3_000): Promise<Packet | undefined> {
    if (this.inbox.length === 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        this.wake = () => { clearTimeout(timer); resolve(); };
      });
      this.wake = undefined;
    }
    return this.inbox.shift();
  }

  /** Goes away abruptly: cancels the stream and closes the channel. */
  destroy(): void {
    this.call.cancel();
    this.client.close();
  }
}

async function serverMetricsAreZero(server: ServerHandle): Promise<boolean> {
  return await metric(server.healthPort, `${SERVER_METRIC}_established_connections`) === 0
    && await metric(server.healthPort, `${SERVER_METRIC}_pending_backend_dials`) === 0;
}

// ---- the shared system -------------------------------------------------------------------

let ws: Workspace;
let server: ServerHandle;
let agent: AgentHandle;
let web: Target;
let echo: Target;
/** Everything to stop and remove after the file, last registered first. */
const cleanups: Array<() => unknown> = [];

test.before(async () => {
  ws = await workspace();
  cleanups.push(() => ws.cleanup());
  web = await httpTarget('c1-target');
  cleanups.push(() => web.close());
  echo = await echoTarget();
  cleanups.push(() => echo.close());
  server = await startServer(ws);
  cleanups.push(() => stop(server));
  agent = await startAgent(ws, server, 'c1');
  cleanups.push(() => stop(agent));
});

test.after.always(async () => {
  for (const cleanup of cleanups.reverse()) {
    await Promise.resolve().then(cleanup).catch(() => undefined);
  }
});

// ---- the tests -----------------------------------------------------------------------------

test.serial('CONNECT to a cluster without an agent answers 500 "No agent available"', async (t) => {
  const reply = await rawConnect(ws, server.connectPort, 'nowhere:443');
  t.is(reply.statusLine, 'HTTP/1.1 500 Internal Server Error');
  t.is(reply.body, 'currently no tunnels available: No agent available');
});

test.serial('CONNECT to a closed port answers 502 with the agent\'s dial error', async (t) => {
  const port = await unusedPort();
  const reply = await rawConnect(ws, server.connectPort, `c1:${port}`);
  t.is(reply.statusLine, 'HTTP/1.1 502 Bad Gateway');
  t.regex(reply.head, /\r\nConnection: close(\r\n|$)/i);
  t.is(reply.body, `dial tcp c1:${port}: connect: connection refused`);
});

test.serial('a client without a certificate is refused at the TLS handshake; the server keeps serving', async (t) => {
  const received = await sendUntilClosed(openSocket(ws, server.connectPort, false), `CONNECT c1:${web.port} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
  t.is(received, '', 'no HTTP response to a client without a certificate');
  t.regex(await tunnelGet(ws, server.connectPort, `c1:${web.port}`), /c1-target GET \/whoami/);
});

test.serial('a method other than CONNECT answers 405, a malformed request 400', async (t) => {
  const get = await request(openSocket(ws, server.connectPort), 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
  t.is(get.statusLine, 'HTTP/1.1 405 Method Not Allowed');

  const hello = await request(openSocket(ws, server.connectPort), 'HELLO\r\n\r\n');
  t.is(hello.statusLine, 'HTTP/1.1 400 Bad Request');

  const garbage = await request(openSocket(ws, server.connectPort), Buffer.concat([randomBytes(512), Buffer.from('\r\n\r\n')]));
  t.is(garbage.statusLine, 'HTTP/1.1 400 Bad Request');

  const udsGet = await request(openSocket(ws, server.connectUds), 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
  t.is(udsGet.statusLine, 'HTTP/1.1 405 Method Not Allowed');
  const udsHello = await request(openSocket(ws, server.connectUds), 'HELLO\r\n\r\n');
  t.is(udsHello.statusLine, 'HTTP/1.1 400 Bad Request');
});

test.serial('garbage on the agent port is dropped; the server and its agent keep serving', async (t) => {
  const agentPortTls = () => {
    const socket = tls.connect({ host: '127.0.0.1', port: server.agentPort, ca: readFileSync(ws.pki.caCert), ALPNProtocols: ['h2'] });
    socket.on('error', () => {});
    return socket;
  };
  const rawTcp = () => net.connect(server.agentPort, '127.0.0.1').on('error', () => {});
  const garbage = randomBytes(64 * 1024);
  const plainGet = 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';

  await t.notThrowsAsync(sendUntilClosed(rawTcp(), garbage), 'raw TCP, random bytes');
  await t.notThrowsAsync(sendUntilClosed(rawTcp(), plainGet), 'raw TCP, plain-text GET');
  await t.notThrowsAsync(sendUntilClosed(agentPortTls(), garbage), 'TLS without a client certificate, random bytes');
  await t.notThrowsAsync(sendUntilClosed(agentPortTls(), plainGet), 'TLS without a client certificate, plain-text GET');

  t.true(isRunning(server.proc), 'the server is still running');
  t.is((await httpGet(server.healthPort, '/readyz')).status, 200);
  t.regex(await tunnelGet(ws, server.connectPort, `c1:${web.port}`), /c1-target GET \/whoami/);
});

/** One request on the server's gRPC unix socket, raw: the response headers and trailers. */
async function rawGrpc(uds: string, headers: http2.OutgoingHttpHeaders, body: Buffer | undefined, endAfterBody = true): Promise<{ status?: number; grpcStatus?: string; message?: string }> {
  const session = http2.connect('http://localhost', { createConnection: () => net.connect(uds) });
  session.on('error', () => {});
  try {
    const stream = session.request({ ':method': 'POST', ':path': PROXY_PATH, 'content-type': 'application/grpc', te: 'trailers', ...headers });
    stream.on('error', () => {});
    if (body) stream.write(body);
    if (endAfterBody) stream.end();
    return await within(new Promise((resolve) => {
      let status: number | undefined;
      const answer = (h: http2.IncomingHttpHeaders) => ({ status, grpcStatus: h['grpc-status'] as string | undefined, message: h['grpc-message'] as string | undefined });
      stream.on('response', (h) => {
        status = Number(h[':status']);
        if (h['grpc-status'] !== undefined || status !== 200) resolve(answer(h));
      });
      stream.on('trailers', (h: http2.IncomingHttpHeaders) => resolve(answer(h)));
      stream.on('close', () => resolve({ status }));
      stream.resume();
    }), 5_000, 'the answer to a malformed gRPC request');
  } finally {
    session.destroy();
  }
}

test.serial('malformed gRPC on the frontend gets a status and ends only its own stream', async (t) => {
  const uds = server.grpcUds;
  const wrongType = await rawGrpc(uds, { 'content-type': 'text/plain' }, Buffer.from('hello'));
  t.is(wrongType.status, 415, 'not gRPC: 415');
  const compressed = await rawGrpc(uds, {}, Buffer.from([1, 0, 0, 0, 2, 8, 2]));
  t.is(compressed.grpcStatus, String(grpc.status.UNIMPLEMENTED), `a compressed message: ${compressed.message}`);
  const gzip = await rawGrpc(uds, { 'grpc-encoding': 'gzip' }, undefined);
  t.is(gzip.grpcStatus, String(grpc.status.UNIMPLEMENTED), 'an encoding other than identity is refused');
  const oversized = await rawGrpc(uds, {}, Buffer.from([0, 0x10, 0, 0, 0]));
  t.is(oversized.grpcStatus, String(grpc.status.RESOURCE_EXHAUSTED), `a 256 MiB message announced: ${oversized.message}`);
  const truncated = await rawGrpc(uds, {}, Buffer.from([0, 0, 0, 0, 100, 8]));
  t.not(truncated.grpcStatus, String(grpc.status.OK), 'a stream that ends inside a message does not end well');
  const unknownPath = await rawGrpc(uds, { ':path': '/NoSuch/Method' }, undefined);
  t.is(unknownPath.grpcStatus, String(grpc.status.UNIMPLEMENTED));
  // Packets the server answers, a malformed one and the end of the stream, all in one write:
  // answered in the same callback that brought the end, a reset of the stream used to spin
  // the server (node:http2 sending empty frames without end) and starve every other client.
  const answered = Buffer.concat([1n, 2n, 3n].flatMap((connectID) => framePacket({ type: PacketType.CLOSE_REQ, connectID })));
  const malformed = Buffer.from([0, 0, 0, 0, 2, 0x0f, 0x00]);
  const decodeError = await rawGrpc(uds, {}, Buffer.concat([answered, malformed]));
  t.is(decodeError.grpcStatus, String(grpc.status.INTERNAL), `a malformed packet after answered ones: ${decodeError.message}`);
  t.regex(decodeURIComponent(decodeError.message ?? ''), /malformed packet/);

  t.true(isRunning(server.proc), 'the server is still running');
  t.regex(await tunnelGet(ws, server.connectPort, `c1:${web.port}`), /c1-target GET \/whoami/);
  await t.notThrowsAsync(eventually(async () => await metric(server.healthPort, `${SERVER_METRIC}_grpc_frontend_streams`) === 0, 5_000, 'no frontend stream left open'));
});

test.serial('a reference-style agent: stray packets get the protocol\'s answers, a tunnel works, an oversized frame ends only its stream', async (t) => {
  const rogue = await RogueAgent.connect(ws, server.agentPort, 'rogue');
  cleanups.push(() => rogue.destroy());

  const headers = await within(rogue.headers, 5_000, 'the server\'s response headers');
  t.is(headers.get(MD_SERVER_ID).length, 1, 'one serverid header');
  t.deepEqual(headers.get(MD_SERVER_COUNT), ['1']);
  t.deepEqual(headers.get(MD_FLOW_CONTROL), [], 'no flow control offered to a reference agent');

  // DATA for a connection the server does not know: CLOSE_REQ for it.
  rogue.send(dataPacket(77n, Buffer.from('stray')));
  t.deepEqual(await rogue.next(), { type: PacketType.CLOSE_REQ, connectID: 77n });

  // A packet type from the future (field 1 = 99): ignored.
  rogue.send(Buffer.from([0x08, 0x63]));
  t.is(await rogue.next(300), undefined, 'nothing answers an unknown packet type');

  // A DIAL_RSP for a dial nobody made opened something on the agent: the server closes it.
  rogue.send(dialResponse(12345n, 5n));
  t.deepEqual(await rogue.next(), { type: PacketType.CLOSE_REQ, connectID: 5n }, 'the stream is still up and answers');

  // A CLOSE_RSP for an unknown connection: ignored.
  rogue.send(closeResponse(9n));
  t.is(await rogue.next(300), undefined, 'nothing answers a stray CLOSE_RSP');

  // Now a correct agent: a CONNECT for rogue:80 becomes a DIAL_REQ.
  const connecting = rawConnect(ws, server.connectPort, 'rogue:80');
  const dial = await rogue.next();
  t.like(dial, { type: PacketType.DIAL_REQ, protocol: 'tcp', address: 'rogue:80' });
  const { random } = dial as DialRequestPacket;
  t.is(typeof random, 'bigint');
  t.true(random >= 0n && random < 2n ** 63n, 'the dial id is a 63-bit value');

  rogue.send(dialResponse(random, 1n));
  const reply = await connecting;
  t.is(reply.statusLine, ESTABLISHED);
  t.is(reply.body, '');

  reply.socket.write('hello from the client');
  const up = await rogue.next();
  t.like(up, { type: PacketType.DATA, connectID: 1n });
  t.is(Buffer.from((up as { data: Uint8Array }).data).toString(), 'hello from the client');

  rogue.send(dataPacket(1n, Buffer.from('hello from the target')));
  t.is(await readBytes(reply.socket, 'hello from the target'.length), 'hello from the target');

  rogue.send(closeResponse(1n));
  await t.notThrowsAsync(closed(reply.socket, 3_000), 'CLOSE_RSP closes the client\'s socket');

  // 5 MiB in one message, above the server's 4 MiB receive limit.
  rogue.send(dataPacket(2n, Buffer.alloc(5 * 1024 * 1024, 0x61)));
  const status = await within(rogue.ended, 5_000, 'the status of the stream that got an oversized frame');
  t.is(status.code, grpc.status.RESOURCE_EXHAUSTED, `the oversized frame ends the stream: ${status.details}`);

  t.true(isRunning(server.proc), 'the server is still running');
  await t.notThrowsAsync(eventually(async () => await metric(server.healthPort, `${SERVER_METRIC}_agent_streams`) === 1, 5_000, 'the ended stream is forgotten'));
  t.is((await rawConnect(ws, server.connectPort, 'rogue:80')).statusLine, 'HTTP/1.1 500 Internal Server Error', 'no dial goes to the ended stream');
  t.regex(await tunnelGet(ws, server.connectPort, `c1:${web.port}`), /c1-target GET \/whoami/);
});

test.serial('when an agent dies, its open connections close and its pending dials fail promptly', async (t) => {
  const server2 = await startServer(ws, [], 'server2');
  cleanups.push(() => stop(server2));
  const agent2 = await startAgent(ws, server2, 'c2');
  cleanups.push(() => stop(agent2));
  const rogue = await RogueAgent.connect(ws, server2.agentPort, 'rogue');
  cleanups.push(() => rogue.destroy());
  await within(rogue.headers, 5_000, 'the server\'s response headers');

  // An open connection through agent c2 ...
  const open = await rawConnect(ws, server2.connectPort, `c2:${echo.port}`);
  t.is(open.statusLine, ESTABLISHED);
  open.socket.write('ping');
  t.is(await readBytes(open.socket, 4), 'ping');
  // ... and a dial through the rogue agent, which never answers.
  const pending = rawConnect(ws, server2.connectPort, 'rogue:80', { timeoutMs: 15_000 });
  t.like(await rogue.next(), { type: PacketType.DIAL_REQ, address: 'rogue:80' });
  t.is((await httpGet(server2.healthPort, '/readyz')).status, 200, 'ready with agents');

  t.false(open.socket.closed, 'the connection is open before its agent dies');
  let since = Date.now();
  await within(agent2.proc.stop('SIGKILL'), 5_000, 'agent c2 exit');
  const closedInTime = await closed(open.socket, 5_000).then(() => true, () => false);
  if (!closedInTime) t.log(`server2 output:\n${server2.proc.output.slice(-3000)}`);
  t.true(closedInTime, 'the open connection closes when its agent dies');
  t.log(`open connection closed ${Date.now() - since} ms after SIGKILL`);

  since = Date.now();
  rogue.destroy();
  const failed = await pending;
  const elapsed = Date.now() - since;
  t.is(failed.statusLine, 'HTTP/1.1 502 Bad Gateway');
  t.true(elapsed < 5_000, `the pending CONNECT failed ${elapsed} ms after its agent went away`);

  await t.notThrowsAsync(eventually(async () => (await httpGet(server2.healthPort, '/readyz')).status === 503, 5_000, '/readyz reports no agent'));
  await t.notThrowsAsync(eventually(() => serverMetricsAreZero(server2), 5_000, 'server2 holds no connections or dials'));
  t.true(isRunning(server2.proc), 'server2 is still running');
});

test.serial('nothing leaks: no connections, dials or target sockets are left open', async (t) => {
  await t.notThrowsAsync(eventually(() => serverMetricsAreZero(server), 10_000, 'the server holds no connections or dials'));
  await t.notThrowsAsync(eventually(async () => await metric(agent.healthPort, `${AGENT_METRIC}_open_endpoint_connections`) === 0, 10_000, 'the agent holds no target connections'));
  await t.notThrowsAsync(eventually(() => web.open === 0 && echo.open === 0, 10_000, 'the targets have no open sockets'));
  t.true(isRunning(server.proc) && isRunning(agent.proc), 'the server and the agent are still running');
});
