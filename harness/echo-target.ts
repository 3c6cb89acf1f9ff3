#!/usr/bin/env node
/**
 * A TCP echo on 127.0.0.1 as a process of its own, for tests that kill a target with SIGKILL
 * and start it again on the same port:
 *
 *   node echo-target.js PORT
 *
 * It prints "echo target ready port=PORT" once listening, and echoes until killed.
 */
import net from 'node:net';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) throw new Error(`echo-target: a port to listen on, not ${JSON.stringify(process.argv[2])}`);

const server = net.createServer((socket) => {
  // A peer that goes away (a killed agent) resets the connection: nothing to report.
  socket.on('error', () => socket.destroy());
  socket.pipe(socket);
});
server.listen(port, '127.0.0.1', () => {
  console.log(`echo target ready port=${(server.address() as net.AddressInfo).port}`);
});
