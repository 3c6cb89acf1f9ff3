/**
 * The sink/source target, as a child process so it has its own event loop: see protocol.ts
 * for what a connection asks of it.
 */
import net from 'node:net';
import { createHash } from 'node:crypto';
import { HEADER_BYTES, parseHeader } from './protocol.js';
import { slices } from './content.js';
import { serve } from './helper-main.js';

/** Sends `total` bytes of the stream from `offset`, at the pace the socket allows, then closes. */
function download(socket: net.Socket, total: number, offset: number): void {
  const pieces = slices(offset, total);
  const pump = () => {
    for (let next = pieces.next(); !socket.destroyed; next = pieces.next()) {
      if (next.done) {
        socket.end();
        return;
      }
      if (!socket.write(next.value)) {
        socket.once('drain', pump);
        return;
      }
    }
  };
  pump();
}

/** Reads `total` bytes (the first of them in `first`), each to `each`, then calls `done`. */
function counted(socket: net.Socket, total: number, first: Buffer, each: (chunk: Buffer) => void, done: () => void): void {
  let got = 0;
  const onData = (chunk: Buffer) => {
    const piece = chunk.subarray(0, total - got);
    got += piece.length;
    each(piece);
    if (got >= total) {
      socket.off('data', onData);
      done();
    }
  };
  if (first.length > 0 || total === 0) onData(first);
  if (got < total) socket.on('data', onData);
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
        download(socket, request.n, request.offset);
        break;
      case 'U': {
        const hash = createHash('sha256');
        counted(socket, request.n, rest, (piece) => hash.update(piece), () => socket.write(hash.digest()));
        break;
      }
      case 'R': {
        const pieces: Buffer[] = [];
        counted(socket, request.n, rest, (piece) => pieces.push(piece), () => socket.write(Buffer.concat(pieces)));
        break;
      }
      case 'E':
        if (rest.length > 0) socket.write(rest);
        socket.pipe(socket);
        break;
    }
  };
  socket.on('data', onHead);
}

await serve(net.createServer(handle));
