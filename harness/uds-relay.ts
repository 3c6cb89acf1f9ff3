#!/usr/bin/env node
/**
 * A byte relay between TCP on 127.0.0.1 and a unix socket, for tests that put a "managed
 * cluster" in a network namespace of its own: unix socket paths are shared across network
 * namespaces, so a relay inside the namespace (TCP -> socket) and one outside (socket ->
 * TCP) give the agent its one way out, to the tunnel server's agent port, and nothing else.
 *
 *   node uds-relay.js tcp-to-uds 127.0.0.1:PORT PATH
 *   node uds-relay.js uds-to-tcp PATH 127.0.0.1:PORT
 *
 * It prints "relay ready" once listening, and relays until killed.
 */
import net from 'node:net';
import { rmSync } from 'node:fs';

const [mode, from, to] = process.argv.slice(2);
const tcp = (address: string) => {
  const at = address.lastIndexOf(':');
  const host = address.slice(0, at);
  if (host !== '127.0.0.1') throw new Error(`uds-relay: only 127.0.0.1 is relayed, not ${host}`);
  return { host, port: Number(address.slice(at + 1)) };
};

function relay(socket: net.Socket): void {
  const upstream = mode === 'tcp-to-uds' ? net.connect(to) : net.connect(tcp(to));
  socket.pipe(upstream).pipe(socket);
  const close = () => { socket.destroy(); upstream.destroy(); };
  socket.on('error', close);
  upstream.on('error', close);
  socket.on('close', close);
  upstream.on('close', close);
}

const server = net.createServer(relay);
if (mode === 'tcp-to-uds') {
  const { host, port } = tcp(from);
  server.listen(port, host);
} else if (mode === 'uds-to-tcp') {
  rmSync(from, { force: true });
  server.listen(from);
} else {
  process.stderr.write('usage: uds-relay tcp-to-uds 127.0.0.1:PORT PATH | uds-to-tcp PATH 127.0.0.1:PORT\n');
  process.exit(2);
}
server.on('listening', () => process.stdout.write('relay ready\n'));
process.on('SIGTERM', () => { server.close(); process.exit(0); });
