#!/usr/bin/env node
/**
 * A tunnel client as a process of its own, so that a test can kill it with SIGKILL in the
 * middle of its transfers. Each of `--parallel` workers dials through the tunnel server's
 * HTTP-CONNECT frontend, again and again, to one of the echo `--targets` in turn, sends a
 * random payload, reads the echo back and prints one JSON line (a TransferOutcome) per
 * attempt, whether it completed or not:
 *
 *   node chaos-client.js --proxy=unix:PATH --targets=c1:PORT,c1:PORT
 *   node chaos-client.js --proxy=grpc:PATH --targets=...
 *   node chaos-client.js --proxy=127.0.0.1:PORT --ca=FILE --cert=FILE --key=FILE --targets=...
 *       [--parallel=N] [--transfers=N] [--max-bytes=N]
 *
 * With --transfers it makes that many attempts in all and then exits; without, it runs until
 * it is killed, or until SIGTERM (once it said "chaos client running" on stderr): then it
 * finishes the attempts under way, prints them, and exits.
 */
import { createHash, randomBytes, randomInt } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { GrpcChannel } from '../lib/client/grpc-channel.js';
import { dialHttpConnect, type HttpConnectProxy } from '../lib/client/http-connect-dialer.js';
import { FileTlsSource } from '../lib/pki/tls-source.js';

/** What a client prints about one attempt. */
export interface TransferOutcome {
  target: string;
  /** The payload's length, and how many bytes came back before the connection closed. */
  bytes: number;
  received: number;
  /** As many bytes came back as were sent: what a test counts as a completed transfer. */
  completed: boolean;
  /** Completed, and exactly the bytes sent came back: the same length and sha256, nothing more. */
  intact: boolean;
  /**
   * Why the attempt did not end well: the dial failed, the connection closed before the
   * payload was back, or nothing came back for STALL_MS and the connection did not close.
   */
  failed?: 'dial' | 'transfer' | 'stall';
  error?: string;
  /** When the attempt ended (Date.now()). */
  at: number;
}

/** Far longer than an echo takes to start coming back on a loaded machine: a connection this quiet was forgotten. */
const STALL_MS = 10_000;
const DIAL_TIMEOUT_MS = 10_000;
const WRITE_CHUNK = 64 * 1024;

const { values } = parseArgs({
  options: {
    proxy: { type: 'string' },
    ca: { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    targets: { type: 'string' },
    parallel: { type: 'string', default: '4' },
    transfers: { type: 'string' },
    'max-bytes': { type: 'string', default: String(1024 * 1024) },
  },
});

function required(name: 'proxy' | 'targets' | 'ca' | 'cert' | 'key'): string {
  const value = values[name];
  if (value === undefined) throw new Error(`chaos-client: --${name}= is required`);
  return value;
}

async function proxyFrom(spec: string): Promise<HttpConnectProxy> {
  if (spec.startsWith('unix:')) return { path: spec.slice('unix:'.length) };
  const at = spec.lastIndexOf(':');
  const tls = await FileTlsSource.load({ ca: required('ca'), cert: required('cert'), key: required('key'), role: 'chaos client' }, { watchIntervalMs: 0 });
  return { host: spec.slice(0, at), port: Number(spec.slice(at + 1)), tls };
}

/** How the workers dial, and what to close when they are done. */
async function dialerFrom(spec: string): Promise<{ dial: (target: string) => Promise<Duplex>; close(): void }> {
  if (spec.startsWith('grpc:')) {
    const channel = new GrpcChannel({ uds: spec.slice('grpc:'.length) }, { timeoutMs: DIAL_TIMEOUT_MS });
    return { dial: (target) => channel.dial(target), close: () => channel.close() };
  }
  const proxy = await proxyFrom(spec);
  return { dial: (target) => dialHttpConnect(proxy, target, { timeoutMs: DIAL_TIMEOUT_MS }), close: () => proxy.tls?.close() };
}

/** Sizes spread evenly over orders of magnitude, 1 byte to `max`: small and large transfers alike. */
function payloadSize(max: number): number {
  return Math.max(1, Math.floor(Math.exp(Math.random() * Math.log(max))));
}

/**
 * Writes `payload` at the pace the socket allows and reads what comes back. Once as many
 * bytes are back as were sent, the client ends its side and waits for the connection to
 * close, so that a byte too many is seen too.
 */
function transfer(socket: Duplex, payload: Buffer): Promise<Pick<TransferOutcome, 'received' | 'completed' | 'intact' | 'failed' | 'error'>> {
  const expected = createHash('sha256').update(payload).digest('hex');
  const hash = createHash('sha256');
  return new Promise((resolve) => {
    let received = 0;
    let completed = false;
    let sameDigest = false;
    let error: string | undefined;
    const finish = (failed?: TransferOutcome['failed']) => {
      clearTimeout(stall);
      socket.destroy();
      resolve({
        received,
        completed,
        intact: completed && sameDigest && received === payload.length,
        ...(failed ? { failed } : {}),
        ...(error ? { error } : {}),
      });
    };
    const stall = setTimeout(() => {
      error = `nothing came back for ${STALL_MS} ms and the connection stayed open, ${received} of ${payload.length} bytes back`;
      finish('stall');
    }, STALL_MS);
    socket.on('data', (chunk: Buffer) => {
      stall.refresh();
      received += chunk.length;
      if (completed) return;
      hash.update(chunk);
      if (received >= payload.length) {
        completed = true;
        sameDigest = hash.digest('hex') === expected;
        socket.end();
      }
    });
    socket.on('error', (err: Error) => { error ??= err.message; });
    socket.once('close', () => finish(completed ? undefined : 'transfer'));
    let offset = 0;
    const pump = () => {
      while (offset < payload.length && !socket.destroyed) {
        const more = socket.write(payload.subarray(offset, offset + WRITE_CHUNK));
        offset += WRITE_CHUNK;
        if (!more) {
          socket.once('drain', pump);
          return;
        }
      }
    };
    pump();
  });
}

const dialer = await dialerFrom(required('proxy'));
const targets = required('targets').split(',');
const parallel = Number(values.parallel);
const maxBytes = Number(values['max-bytes']);
const limit = values.transfers === undefined ? Infinity : Number(values.transfers);

let attempts = 0;
let stopping = false;
process.once('SIGTERM', () => { stopping = true; });
// On stderr, to keep stdout outcomes only: from here on SIGTERM lets the attempts finish.
process.stderr.write('chaos client running\n');

async function attempt(target: string): Promise<TransferOutcome> {
  const payload = randomBytes(payloadSize(maxBytes));
  const base = { target, bytes: payload.length };
  let socket: Duplex;
  try {
    socket = await dialer.dial(target);
  } catch (err) {
    return { ...base, received: 0, completed: false, intact: false, failed: 'dial', error: (err as Error).message, at: Date.now() };
  }
  return { ...base, ...await transfer(socket, payload), at: Date.now() };
}

async function worker(): Promise<void> {
  while (attempts < limit && !stopping) {
    const outcome = await attempt(targets[attempts++ % targets.length]);
    process.stdout.write(`${JSON.stringify(outcome)}\n`);
    // While part of the system is down a dial fails at once: no need to spin on it.
    if (outcome.failed === 'dial') await sleep(100 + randomInt(100));
  }
}

await Promise.all(Array.from({ length: parallel }, worker));
dialer.close();
