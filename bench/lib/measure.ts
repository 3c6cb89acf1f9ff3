/**
 * Client-side measurements: timed downloads, uploads and request/response cycles over any
 * connection, each bounded in time; plus percentiles, a concurrency pool and units.
 */
import { randomFillSync } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { ACK, header } from './protocol.js';
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

const CHUNK = randomFillSync(Buffer.alloc(256 * KiB));

/** Settles once, removing listeners; shared by the measurements below. */
function watch<T>(conn: Conn, limitMs: number, onLimit: () => T, described: () => string) {
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
  const onClose = () => finish(new Error(`${described()}: the connection closed`));
  conn.once('error', onError);
  conn.once('close', onClose);
  conn.once('end', onClose);
  cleanups.push(() => conn.off('error', onError).off('close', onClose).off('end', onClose));
  const timer = setTimeout(() => finish(onLimit()), limitMs);
  return { promise, finish, isDone: () => done, cleanups };
}

/**
 * Asks the target for `n` bytes and counts them until the last one. Time runs from the call
 * (right after the dial completed) to the last byte.
 */
export function download(conn: Conn, n: number, limitMs: number): Promise<Transfer> {
  const start = now();
  let got = 0;
  const result = (complete: boolean): Transfer => ({ bytes: got, seconds: (now() - start) / 1000, complete });
  const w = watch(conn, limitMs, () => result(false), () => `download after ${got}/${n} bytes`);
  const onData = (chunk: Buffer) => {
    got += chunk.length;
    if (got >= n) w.finish(result(true));
  };
  conn.on('data', onData);
  w.cleanups.push(() => conn.off('data', onData));
  conn.write(header('D', n));
  conn.resume();
  return w.promise;
}

/**
 * Sends `n` bytes at the pace the connection allows and waits for the target's 1-byte ack.
 * Time runs from the call to the ack.
 */
export function upload(conn: Conn, n: number, limitMs: number): Promise<Transfer> {
  const start = now();
  let written = 0;
  const result = (complete: boolean): Transfer => ({
    bytes: complete ? n : Math.max(0, written - conn.writableLength),
    seconds: (now() - start) / 1000,
    complete,
  });
  const w = watch(conn, limitMs, () => result(false), () => `upload after ${written}/${n} bytes`);
  const onData = (chunk: Buffer) => {
    if (chunk.includes(ACK)) w.finish(result(true));
  };
  conn.on('data', onData);
  const pump = () => {
    while (written < n && !w.isDone()) {
      const size = Math.min(CHUNK.length, n - written);
      written += size;
      if (!conn.write(size === CHUNK.length ? CHUNK : CHUNK.subarray(0, size))) {
        conn.once('drain', pump);
        return;
      }
    }
  };
  w.cleanups.push(() => conn.off('data', onData).off('drain', pump));
  conn.write(header('U', n));
  conn.resume();
  pump();
  return w.promise;
}

/** Sends `size` bytes, resolves once `size` bytes came back. */
export function requestResponse(conn: Conn, size: number, limitMs: number): Promise<void> {
  let got = 0;
  const w = watch<void | Error>(conn, limitMs, () => new Error(`no full response within ${limitMs} ms (${got}/${size} bytes)`), () => `request/response after ${got}/${size} bytes`);
  const onData = (chunk: Buffer) => {
    got += chunk.length;
    if (got >= size) w.finish(undefined);
  };
  conn.on('data', onData);
  w.cleanups.push(() => conn.off('data', onData));
  conn.write(Buffer.concat([header('R', size), CHUNK.subarray(0, size)]));
  conn.resume();
  return w.promise.then((v) => { if (v instanceof Error) throw v; });
}

/** Echo round trip of a few bytes: proves the connection works end to end. */
export function ping(conn: Conn, limitMs: number): Promise<void> {
  const probe = Buffer.from('ping-pong-16byte');
  let got = 0;
  const w = watch<void | Error>(conn, limitMs, () => new Error(`no echo within ${limitMs} ms`), () => 'echo');
  const onData = (chunk: Buffer) => {
    got += chunk.length;
    if (got >= probe.length) w.finish(undefined);
  };
  conn.on('data', onData);
  w.cleanups.push(() => conn.off('data', onData));
  conn.write(Buffer.concat([header('E', 0), probe]));
  conn.resume();
  return w.promise.then((v) => { if (v instanceof Error) throw v; });
}

/** Nearest-rank percentile of unsorted samples. */
export function percentile(samples: number[], p: number): number {
  if (samples.length === 0) return NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
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
  return [...items].sort((a, b) => value(a) - value(b))[Math.floor((items.length - 1) / 2)]!;
}
