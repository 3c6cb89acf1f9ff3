/**
 * A TCP relay that adds --delay-ms to each direction, like a WAN link with that one-way
 * latency and no bandwidth limit: every chunk read is held in a queue until its due time
 * (arrival + delay), then written, so order is preserved. It reads as fast as the sender
 * writes; it only stops reading when more than MAX_QUEUED bytes wait for a slow receiver, to
 * stay bounded in memory.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { numberFlag, relayServer, serve } from './helper-main.js';

const targetPort = numberFlag('target-port');
const delayMs = numberFlag('delay-ms', 25);
const MAX_QUEUED = 64 * 1024 * 1024;
const RESUME_BELOW = 32 * 1024 * 1024;

interface Item {
  due: number;
  chunk: Buffer | null; // null: the sender ended
}

/** Forwards `from` to `to` with the delay. */
function delayed(from: net.Socket, to: net.Socket): void {
  let queue: Item[] = [];
  let head = 0;
  let queued = 0;
  let timer: NodeJS.Timeout | undefined;
  let paused = false;

  const backlog = () => queued + to.writableLength;
  const maybeResume = () => {
    if (paused && backlog() < RESUME_BELOW) {
      paused = false;
      from.resume();
    }
  };
  const schedule = () => {
    if (timer || head >= queue.length) return;
    timer = setTimeout(flush, Math.max(0, queue[head].due - performance.now()));
  };
  const flush = () => {
    timer = undefined;
    const now = performance.now();
    to.cork();
    while (head < queue.length && queue[head].due <= now) {
      const { chunk } = queue[head++];
      if (chunk === null) {
        to.end();
      } else if (!to.destroyed) {
        queued -= chunk.length;
        to.write(chunk);
      }
    }
    to.uncork();
    if (head > 1024 && head * 2 > queue.length) {
      queue = queue.slice(head);
      head = 0;
    }
    maybeResume();
    schedule();
  };

  from.on('data', (chunk: Buffer) => {
    queue.push({ due: performance.now() + delayMs, chunk });
    queued += chunk.length;
    if (!paused && backlog() > MAX_QUEUED) {
      paused = true;
      from.pause();
    }
    schedule();
  });
  from.on('end', () => {
    queue.push({ due: performance.now() + delayMs, chunk: null });
    schedule();
  });
  to.on('drain', maybeResume);
  to.on('close', () => clearTimeout(timer));
}

await serve(relayServer(targetPort, (client, upstream) => {
  delayed(client, upstream);
  delayed(upstream, client);
}, true));
