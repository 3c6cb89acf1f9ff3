/**
 * The sink/source target, as a child process so it has its own event loop: see protocol.ts
 * for what a connection asks of it.
 */
import net from 'node:net';
import { randomFillSync } from 'node:crypto';
import { ACK, HEADER_BYTES, parseHeader } from './protocol.js';
import { serve } from './helper-main.js';

const CHUNK = randomFillSync(Buffer.alloc(256 * 1024));
const ACK_BYTE = Buffer.from([ACK]);

function download(socket: net.Socket, total: number): void {
  let left = total;
  const pump = () => {
    while (left > 0 && !socket.destroyed) {
      const n = Math.min(left, CHUNK.length);
      left -= n;
      if (!socket.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) {
        socket.once('drain', pump);
        return;
      }
    }
  };
  pump();
}

function counted(socket: net.Socket, total: number, first: Buffer, done: () => void): void {
  let got = first.length;
  if (got >= total) {
    done();
    return;
  }
  const onData = (chunk: Buffer) => {
    got += chunk.length;
    if (got >= total) {
      socket.off('data', onData);
      done();
    }
  };
  socket.on('data', onData);
}

function handle(socket: net.Socket): void {
  socket.setNoDelay(true);
  socket.on('error', () => socket.destroy());
  let head: Buffer = Buffer.alloc(0);
  const onHead = (chunk: Buffer) => {
    head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
    if (head.length < HEADER_BYTES) return;
    socket.off('data', onHead);
    let request;
    try {
      request = parseHeader(head);
    } catch {
      socket.destroy();
      return;
    }
    const rest = head.subarray(HEADER_BYTES);
    switch (request.mode) {
      case 'D':
        socket.on('data', () => undefined);
        download(socket, request.n);
        break;
      case 'U':
        counted(socket, request.n, rest, () => socket.write(ACK_BYTE));
        break;
      case 'R':
        counted(socket, request.n, rest, () => download(socket, request.n));
        break;
      case 'E':
        if (rest.length > 0) socket.write(rest);
        socket.pipe(socket);
        break;
    }
  };
  socket.on('data', onHead);
}

await serve(net.createServer(handle));
