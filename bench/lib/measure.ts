/**
 * Client-side measurements: timed downloads, uploads and request/response cycles over any
 * connection, each bounded in time and each checked where its bytes arrive (content.ts);
 * plus percentiles, a concurrency pool and units.
 */
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { DIGEST_BYTES, header } from './protocol.js';
import { Received, bytesAt, mismatch, slices, type Payload } from './content.js';
import { integrityFailure } from './integrity.js';
import type { Conn } from './dialers.js';

export const MiB = 1024 * 1024;
export const KiB = 1024;

export const now = (): number => performance.now();

export interface Transfer {
  bytes: number;
  seconds: number;
  /** False when the time limit cut the transfer short (bytes is then what got through). */
  complete: boolean;
}

/** MB/s with MB = 10^6 bytes. */
export function mbps(t: Pick<Transfer, 'bytes' | 'seconds'>): number {
  return t.seconds > 0 ? t.bytes / t.seconds / 1e6 : 0;
}

/** How long a download waits, after its last byte, for the target's close (and no byte more). */
const CLOSE_WAIT_MS = 10_000;

/** Settles once, removing listeners; shared by the measurements below. */
function watch<T>(conn: Conn, limitMs: number, onLimit: () => T, described: () => string, onEnd?: () => T | Error) {
  let settle!: { resolve: (v: T) => void; reject: (e: Error) => void };
  const promise = new Promise<T>((resolve, reject) => { settle = { resolve, reject }; });
  let done = false;
  const cleanups: Array<() => void> = [];
  const finish = (value: T | Error) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    for (const c of cleanups) c();
    if (value instanceof Error) settle.reject(value);
    else settle.resolve(value);
  };
  const onError = (err: Error) => finish(new Error(`${described()}: ${err.message}`));
  const onClose = () => finish(onEnd?.() ?? new Error(`${described()}: the connection closed`));
  conn.once('error', onError);
  conn.once('close', onClose);
  conn.once('end', onClose);
  cleanups.push(() => conn.off('error', onError).off('close', onClose).off('end', onClose));
  let timer = setTimeout(() => finish(onLimit()), limitMs);
  return { promise, finish, isDone: () => done, cleanups, restartTimer: (ms: number, onTimeout: () => T | Error) => {
    clearTimeout(timer);
    timer = setTimeout(() => finish(onTimeout()), ms);
  } };
}

/**
 * Asks the target for the payload's bytes and takes them until the target closes. Time runs
 * from the call (right after the dial completed) to the last byte. The bytes must arrive
 * whole: exactly the payload's length, with its sha256, and then the close; anything else is
 * an integrity failure (thrown), and a transfer cut short by the time limit is reported as such.
 */
export function download(conn: Conn, expected: Payload, limitMs: number): Promise<Transfer> {
  const start = now();
  const received = new Received();
  let seconds = 0;
  const what = () => `download of ${expected.bytes} bytes from offset ${expected.offset}`;
  const result = (complete: boolean): Transfer => ({ bytes: received.bytes, seconds: seconds || (now() - start) / 1000, complete });
  const verdict = (): Transfer | Error => {
    const problem = mismatch(`${what()}, then the connection ended`, { bytes: received.bytes, sha256: received.digest() }, expected);
    return problem ? integrityFailure(problem) : result(true);
  };
  const w = watch(conn, limitMs, () => result(false), () => `download after ${received.bytes}/${expected.bytes} bytes`, verdict);
  const onData = (chunk: Buffer) => {
    received.update(chunk);
    if (seconds === 0 && received.bytes >= expected.bytes) {
      seconds = (now() - start) / 1000;
      // The clock has stopped; the close is still to come, and no byte before it.
      w.restartTimer(CLOSE_WAIT_MS, () => integrityFailure(`${what()}: the target's close did not follow its last byte within ${CLOSE_WAIT_MS / 1000} s`));
    }
  };
  conn.on('data', onData);
  w.cleanups.push(() => conn.off('data', onData));
  conn.write(header('D', expected.bytes, expected.offset));
  conn.resume();
  return w.promise;
}

/**
 * Sends the payload's bytes at the pace the connection allows and waits for the target's
 * sha256 of what it read, which must be the payload's. Time runs from the call to the answer.
 */
export function upload(conn: Conn, sent: Payload, limitMs: number): Promise<Transfer> {
  const start = now();
  let written = 0;
  const answer: Buffer[] = [];
  let answered = 0;
  const result = (complete: boolean): Transfer => ({
    bytes: complete ? sent.bytes : Math.max(0, written - conn.writableLength),
    seconds: (now() - start) / 1000,
    complete,
  });
  const w = watch(conn, limitMs, () => result(false), () => `upload after ${written}/${sent.bytes} bytes`);
  const onData = (chunk: Buffer) => {
    answer.push(chunk);
    answered += chunk.length;
    if (answered < DIGEST_BYTES) return;
    const sha256 = Buffer.concat(answer).subarray(0, DIGEST_BYTES).toString('hex');
    const problem = sha256 === sent.sha256 ? undefined : `upload of ${sent.bytes} bytes from offset ${sent.offset}: the target read bytes whose sha256 differs (${sha256.slice(0, 12)}… for ${sent.sha256.slice(0, 12)}…)`;
    w.finish(problem ? integrityFailure(problem) : result(true));
  };
  conn.on('data', onData);
  const pieces = slices(sent.offset, sent.bytes);
  const pump = () => {
    for (let next = pieces.next(); !next.done && !w.isDone(); next = pieces.next()) {
      written += next.value.length;
      if (!conn.write(next.value)) {
        conn.once('drain', pump);
        return;
      }
    }
  };
  w.cleanups.push(() => conn.off('data', onData).off('drain', pump));
  conn.write(header('U', sent.bytes, sent.offset));
  conn.resume();
  pump();
  return w.promise;
}

/** Sends `size` bytes of the stream from `offset`; resolves once the same bytes came back. */
export function requestResponse(conn: Conn, size: number, limitMs: number, offset = 0): Promise<void> {
  return exchange(conn, header('R', size), size, offset, limitMs, 'request/response');
}

/** Echo round trip of a few bytes: proves the connection works end to end. */
export function ping(conn: Conn, limitMs: number, offset = 0): Promise<void> {
  return exchange(conn, header('E', 0), 16, offset, limitMs, 'echo');
}

/** Sends `head` and `size` stream bytes; resolves once exactly those bytes came back (length and sha256). */
function exchange(conn: Conn, head: Buffer, size: number, offset: number, limitMs: number, what: string): Promise<void> {
  const body = bytesAt(offset, size);
  const expected: Payload = { offset, bytes: size, sha256: createHash('sha256').update(body).digest('hex') };
  const received = new Received();
  const w = watch<void | Error>(conn, limitMs, () => new Error(`${what}: no full answer within ${limitMs} ms (${received.bytes}/${size} bytes)`), () => `${what} after ${received.bytes}/${size} bytes`);
  const onData = (chunk: Buffer) => {
    received.update(chunk);
    if (received.bytes < size) return;
    const problem = mismatch(what, { bytes: received.bytes, sha256: received.digest() }, expected);
    w.finish(problem ? integrityFailure(problem) : undefined);
  };
  conn.on('data', onData);
  w.cleanups.push(() => conn.off('data', onData));
  conn.write(Buffer.concat([head, body]));
  conn.resume();
  return w.promise.then((v) => { if (v instanceof Error) throw v; });
}

/** Nearest-rank percentile of unsorted samples. */
export function percentile(samples: number[], p: number): number {
  if (samples.length === 0) return NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

/** Runs `task(i)` for i in [0, count) with at most `concurrency` at once; results in order. */
export async function pool<T>(count: number, concurrency: number, task: (i: number) => Promise<T>): Promise<T[]> {
  const results = new Array<T>(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      results[i] = await task(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return results;
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Polls `check` every 100 ms until it holds or `timeoutMs` passed; returns whether it held. */
export async function waitUntil(check: () => Promise<boolean> | boolean, timeoutMs: number): Promise<boolean> {
  const deadline = now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return true;
    } catch {
      // e.g. the metrics endpoint was busy; try again
    }
    if (now() > deadline) return false;
    await sleep(100);
  }
}

export function formatBytes(bytes: number): string {
  if (bytes >= 1024 * MiB) return `${+(bytes / (1024 * MiB)).toFixed(2)} GiB`;
  if (bytes >= MiB) return `${+(bytes / MiB).toFixed(1)} MiB`;
  return `${+(bytes / KiB).toFixed(1)} KiB`;
}

/** The item with the median value (the lower middle of an even count). */
export function medianBy<T>(items: T[], value: (item: T) => number): T {
  return [...items].sort((a, b) => value(a) - value(b))[Math.floor((items.length - 1) / 2)];
}
