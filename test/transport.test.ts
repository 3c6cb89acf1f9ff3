import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createServer, channelOptions } from '../lib/transport/options.js';
import { bindServer } from '../lib/transport/credentials.js';
import { AGENT_LISTENER_WINDOW } from '../lib/transport/http2-windows.js';
import { proxyServiceDefinition } from '../lib/transport/services.js';
import { announceFlowControl, negotiateFlowControl, peerWindow } from '../lib/transport/flow-control-metadata.js';

const echoDefinition = {
  Echo: {
    path: '/test.Echo/Echo', requestStream: true, responseStream: true,
    requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b,
    responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b,
  },
} satisfies grpc.ServiceDefinition;

test('a server created with a receive window advertises it and raises the connection window', async (t) => {
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-h2-'));
  const socket = join(dir, 'grpc.sock');
  const server = createServer(AGENT_LISTENER_WINDOW);
  server.addService(proxyServiceDefinition, { Proxy: (call: grpc.ServerDuplexStream<unknown, unknown>) => call.end() });
  await bindServer(server, `unix://${socket}`, grpc.ServerCredentials.createInsecure(), AGENT_LISTENER_WINDOW);
  const session = http2.connect('http://localhost', { createConnection: () => net.connect(socket) });
  try {
    const [settings] = await once(session, 'remoteSettings') as [http2.Settings];
    t.is(settings.initialWindowSize, AGENT_LISTENER_WINDOW);
    // The connection window arrives as a WINDOW_UPDATE right after the settings.
    const deadline = Date.now() + 5_000;
    while ((session.state.remoteWindowSize ?? 0) < AGENT_LISTENER_WINDOW && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    t.is(session.state.remoteWindowSize, AGENT_LISTENER_WINDOW);
  } finally {
    session.destroy();
    server.forceShutdown();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bulk in both directions at once over a raised listener does not deadlock', async (t) => {
  // With large windows both ways, Node HTTP/2 sessions that both block in a write stop
  // reading and never recover; the channel keeps its receive window small to prevent it.
  const server = createServer(AGENT_LISTENER_WINDOW);
  server.addService(echoDefinition, {
    Echo: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      call.on('data', (b: Buffer) => call.write(b));
      call.on('end', () => call.end());
    },
  });
  const port = await bindServer(server, '127.0.0.1:0', grpc.ServerCredentials.createInsecure(), AGENT_LISTENER_WINDOW);
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), channelOptions());
  try {
    const call = client.makeBidiStreamRequest('/test.Echo/Echo', (b: Buffer) => b, (b: Buffer) => b, new grpc.Metadata());
    const total = 48 * 1024 * 1024;
    const chunk = Buffer.alloc(32 * 1024, 7);
    let received = 0;
    const done = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 30_000);
      call.on('data', (b: Buffer) => {
        received += b.length;
        if (received >= total) { clearTimeout(timer); resolve(true); }
      });
    });
    let sent = 0;
    const pump = () => {
      while (sent < total) {
        sent += chunk.length;
        if (!call.write(chunk)) { call.once('drain', pump); return; }
      }
      call.end();
    };
    pump();
    t.true(await done, `echoed ${received} of ${total} bytes`);
  } finally {
    client.close();
    server.forceShutdown();
  }
});

test('flow control is on only when both ends announce a window', (t) => {
  const announced = new grpc.Metadata();
  announceFlowControl(announced, 4 << 20);
  t.is(peerWindow(announced), 1 << 20, 'a connection starts at a quarter of the most it may hold');
  t.deepEqual(negotiateFlowControl(announced, 8 << 20), { sendWindow: 1 << 20, receiveWindow: 2 << 20 });
  t.is(negotiateFlowControl(new grpc.Metadata(), 4 << 20), undefined, 'a reference peer announces nothing');
  t.is(negotiateFlowControl(announced, undefined), undefined, 'switched off on this end');
  const silly = new grpc.Metadata();
  silly.set('tke-flow-control', 'window=12');
  t.is(peerWindow(silly), undefined, 'a window too small to be useful is refused');
});
