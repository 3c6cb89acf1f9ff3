/**
 * Gives memory back after many connections closed. V8 collects its heap under allocation
 * pressure, and a process whose connections just closed allocates almost nothing, so its
 * heap would stay at the high-water mark for minutes (and with it the resident size of
 * every page that held a connection's objects). Once the open-connection count has fallen
 * by at least `minDrop` and to at most half of its peak, and has stayed there for a few
 * polls, a full collection runs, at most once per `minIntervalMs`.
 *
 * A full collection of a heap that held 10,000 connections takes tens of milliseconds; it
 * only runs when most connections are gone, when the pause costs least. After it, the C
 * heap's free pages go back to the operating system (native-heap.ts), where glibc would keep
 * them.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Logger } from './log.js';
import { nativeHeapRelease, type Release } from './native-heap.js';

export interface MemoryReclaimOptions {
  /** How often the connection count is read. */
  intervalMs?: number;
  /** Polls the count must stay down before collecting. */
  quietPolls?: number;
  /** Fewer closed connections than this are not worth a collection. */
  minDrop?: number;
  minIntervalMs?: number;
  /** The full collection; V8's own gc() by default. */
  collect?: () => void;
  /**
   * Returns the C heap's free pages to the operating system after the collection: glibc's
   * malloc_trim by default where it can be loaded, null for none.
   */
  release?: Release | null;
}

/**
 * Quiet for 6 s: the count has stopped moving, so a wave of closes is over and the
 * collection finds its connections unreferenced.
 */
const DEFAULTS = { intervalMs: 1_000, quietPolls: 6, minDrop: 1_000, minIntervalMs: 30_000 };
const MiB = 1024 * 1024;

/** The log message of a collection, for tools that read the binaries' logs (the bench). */
export const RECLAIM_LOG_MESSAGE = 'collected the heap after connections closed';

let v8Collect: (() => void) | undefined;

/** V8's gc(), made available the way --expose-gc would (it cannot be set after start-up otherwise). */
export function fullCollection(): () => void {
  if (!v8Collect) {
    if (typeof globalThis.gc !== 'function') setFlagsFromString('--expose-gc');
    const exposed: (() => void) | undefined = typeof globalThis.gc === 'function' ? () => void globalThis.gc!() : undefined;
    v8Collect = exposed ?? (runInNewContext('gc') as () => void);
  }
  return v8Collect;
}

export class MemoryReclaimer {
  private readonly options: Required<Omit<MemoryReclaimOptions, 'release'>>;
  private readonly release: Release | null;
  private readonly timer: NodeJS.Timeout;
  private peak = 0;
  private last = -1;
  private quiet = 0;
  private lastCollection = Number.NEGATIVE_INFINITY;
  collections = 0;

  constructor(private readonly openConnections: () => number, private readonly log: Logger, options: MemoryReclaimOptions = {}) {
    const { release, ...rest } = options;
    this.options = { ...DEFAULTS, collect: rest.collect ?? fullCollection(), ...stripUndefined(rest) };
    this.release = release === undefined ? defaultRelease(log) : release;
    this.timer = setInterval(() => this.poll(), this.options.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private poll(): void {
    const open = this.openConnections();
    this.quiet = open === this.last ? this.quiet + 1 : 0;
    this.last = open;
    if (open > this.peak) this.peak = open;
    const dropped = this.peak - open;
    if (dropped < this.options.minDrop || open > this.peak / 2 || this.quiet < this.options.quietPolls) return;
    if (Date.now() - this.lastCollection < this.options.minIntervalMs) return;
    const before = process.memoryUsage();
    const started = performance.now();
    // Twice: the first pass runs the finalizers of native handles, which frees what they held.
    this.options.collect();
    this.options.collect();
    const collected = process.memoryUsage();
    const released = this.release?.() ?? false;
    this.lastCollection = Date.now();
    this.collections++;
    const after = process.memoryUsage();
    // Resident size before, after the collection and, where there was a trim, after it.
    const rss = (this.release ? [before, collected, after] : [before, after]).map((m) => (m.rss / MiB).toFixed(0)).join('->');
    const trim = this.release ? ` (${released ? 'after malloc_trim' : 'malloc_trim found nothing to release'})` : '';
    this.log.info(RECLAIM_LOG_MESSAGE, {
      closed: dropped,
      open,
      heapMiB: `${(before.heapTotal / MiB).toFixed(0)}->${(after.heapTotal / MiB).toFixed(0)}`,
      rssMiB: `${rss}${trim}`,
      ms: Math.round(performance.now() - started),
    });
    this.peak = open;
  }
}

/** glibc's malloc_trim, or null where it cannot be loaded (and the log says why). */
function defaultRelease(log: Logger): Release | null {
  const heap = nativeHeapRelease();
  if ('release' in heap) return heap.release;
  log.info('memory freed by closed connections may stay with the C allocator', { reason: heap.unavailable });
  return null;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
