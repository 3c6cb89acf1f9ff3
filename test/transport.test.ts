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
import { DEFAULT_HTTP2_WINDOW } from '../lib/transport/http2-windows.js';
import { proxyServiceDefinition } from '../lib/transport/services.js';
import { announceFlowControl, negotiateFlowControl, peerWindow } from '../lib/transport/flow-control-metadata.js';

test('our gRPC servers advertise a raised HTTP/2 stream window and raise the connection window', async (t) => {
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-h2-'));
  const socket = join(dir, 'grpc.sock');
  const server = createServer();
  server.addService(proxyServiceDefinition, { Proxy: (call: grpc.ServerDuplexStream<unknown, unknown>) => call.end() });
  await bindServer(server, `unix://${socket}`, grpc.ServerCredentials.createInsecure());
  const session = http2.connect('http://localhost', { createConnection: () => net.connect(socket) });
  try {
    const [settings] = await once(session, 'remoteSettings') as [http2.Settings];
    t.is(settings.initialWindowSize, DEFAULT_HTTP2_WINDOW);
    // The connection window arrives as a WINDOW_UPDATE right after the settings.
    const deadline = Date.now() + 5_000;
    while ((session.state.remoteWindowSize ?? 0) < DEFAULT_HTTP2_WINDOW && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    t.is(session.state.remoteWindowSize, DEFAULT_HTTP2_WINDOW);
  } finally {
    session.destroy();
    server.forceShutdown();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('our gRPC channels advertise the raised HTTP/2 window to the server', async (t) => {
  const h2 = http2.createServer();
  const seen = new Promise<http2.Settings>((resolve) => h2.on('session', (s) => s.once('remoteSettings', resolve)));
  h2.listen(0, '127.0.0.1');
  await once(h2, 'listening');
  const client = new grpc.Client(`127.0.0.1:${(h2.address() as net.AddressInfo).port}`, grpc.credentials.createInsecure(), channelOptions());
  try {
    client.waitForReady(Date.now() + 5_000, () => undefined);
    const settings = await seen;
    t.is(settings.initialWindowSize, DEFAULT_HTTP2_WINDOW);
  } finally {
    client.close();
    h2.close();
  }
});

test('flow control is on only when both ends announce a window', (t) => {
  const announced = new grpc.Metadata();
  announceFlowControl(announced, 1 << 20);
  t.is(peerWindow(announced), 1 << 20);
  t.deepEqual(negotiateFlowControl(announced, 4 << 20), { sendWindow: 1 << 20, receiveWindow: 4 << 20 });
  t.is(negotiateFlowControl(new grpc.Metadata(), 4 << 20), undefined, 'a reference peer announces nothing');
  t.is(negotiateFlowControl(announced, undefined), undefined, 'switched off on this end');
  const silly = new grpc.Metadata();
  silly.set('tke-flow-control', 'window=12');
  t.is(peerWindow(silly), undefined, 'a window too small to be useful is refused');
});
