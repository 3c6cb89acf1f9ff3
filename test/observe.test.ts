import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { fullCollection, MemoryReclaimer } from '../lib/observe/memory-reclaim.js';
import { nativeHeapRelease } from '../lib/observe/native-heap.js';
import { logger } from '../lib/observe/log.js';
import { MetricsRegistry } from '../lib/observe/metrics.js';
import { heapGrowthChosen, widenHeapGrowth } from '../lib/cli/heap-growth.js';

const log = logger('test');

/**
 * A reclaimer polling every 10 ms, with `afterPolls(n)` to wait for n more of its polls:
 * tests count polls, not milliseconds, so a loaded machine cannot make them fail.
 */
function reclaimer(open: { n: number }, minIntervalMs = 0) {
  const calls: string[] = [];
  let polls = 0;
  const r = new MemoryReclaimer(() => { polls++; return open.n; }, log, {
    intervalMs: 10, quietPolls: 2, minDrop: 1_000, minIntervalMs,
    collect: () => { calls.push('collect'); },
    release: () => { calls.push('release'); return true; },
  });
  const afterPolls = async (n: number) => {
    const target = polls + n;
    while (polls < target) await sleep(5);
  };
  return { r, collections: () => calls.filter((c) => c === 'collect').length, calls, afterPolls };
}

test('the heap is collected once after most connections closed and the count settled', async (t) => {
  const open = { n: 0 };
  const { r, collections, afterPolls } = reclaimer(open);
  open.n = 5_000;
  await afterPolls(6);
  t.is(collections(), 0, 'nothing closed yet');
  open.n = 3_000; // 2,000 closed, but more than half still open
  await afterPolls(6);
  t.is(collections(), 0, 'most connections are still open');
  open.n = 10;
  await afterPolls(8);
  t.is(collections(), 2, 'one collection, of two passes');
  await afterPolls(8);
  t.is(collections(), 2, 'once, not on every poll');
  r.stop();
});

/** Polls `done` every 10 ms until it holds or `ms` passed; says whether it held. */
async function until(done: () => boolean, ms = 5_000): Promise<boolean> {
  for (const end = Date.now() + ms; !done(); await sleep(10)) if (Date.now() > end) return false;
  return true;
}

test('freed native memory is released after the collection, not before', async (t) => {
  const open = { n: 2_000 };
  const { r, calls, afterPolls } = reclaimer(open);
  await afterPolls(4);
  open.n = 0;
  t.true(await until(() => calls.includes('release')), 'released once the count settled');
  await afterPolls(5);
  t.deepEqual(calls, ['collect', 'collect', 'release']);
  r.stop();
});

test('without a release function the reclaimer still collects', async (t) => {
  const open = { n: 2_000 };
  let collections = 0;
  let polls = 0;
  const r = new MemoryReclaimer(() => { polls++; return open.n; }, log, { intervalMs: 10, quietPolls: 2, minDrop: 1_000, minIntervalMs: 0, collect: () => { collections++; }, release: null });
  t.true(await until(() => polls >= 4), 'the peak was seen');
  open.n = 0;
  t.true(await until(() => collections === 2), 'collected once the count settled');
  r.stop();
});

test('on glibc, malloc_trim gives the free pages between live chunks back to the system', async (t) => {
  const glibc = (process.report.getReport() as { header: { glibcVersionRuntime?: string } }).header.glibcVersionRuntime;
  const heap = nativeHeapRelease();
  if (!glibc) {
    t.true('unavailable' in heap && heap.unavailable.length > 0, 'says why nothing can be released');
    return;
  }
  if (!('release' in heap)) return t.fail(`glibc ${glibc}, but: ${heap.unavailable}`);
  t.is(nativeHeapRelease(), heap, 'loaded once');
  // 100 MB in 2 KB native chunks, of which every 50th stays live: glibc cannot trim the top.
  let chunks: Buffer[] | undefined = Array.from({ length: 50_000 }, () => Buffer.allocUnsafeSlow(2_000).fill(1));
  const live = chunks.filter((_, i) => i % 50 === 0);
  chunks = undefined;
  const collect = fullCollection();
  collect();
  collect();
  await sleep(300); // backing stores are freed by V8's sweeper, off the main thread
  const before = process.memoryUsage().rss;
  t.true(heap.release(), 'malloc_trim released memory');
  const after = process.memoryUsage().rss;
  t.true(before - after > 50 * 1024 * 1024, `RSS went from ${(before / 2 ** 20).toFixed(0)} to ${(after / 2 ** 20).toFixed(0)} MiB`);
  t.is(live.length, 1_000);
  t.is(chunks, undefined);
});

test('a few closed connections are not worth a collection', async (t) => {
  const open = { n: 900 };
  const { r, collections, afterPolls } = reclaimer(open);
  await afterPolls(4);
  open.n = 0;
  await afterPolls(8);
  t.is(collections(), 0);
  r.stop();
});

test('collections are at least minIntervalMs apart', async (t) => {
  const open = { n: 2_000 };
  const { r, collections, afterPolls } = reclaimer(open, 60_000);
  await afterPolls(4);
  open.n = 0;
  await afterPolls(8);
  t.is(collections(), 2);
  open.n = 2_000;
  await afterPolls(4);
  open.n = 0;
  await afterPolls(8);
  t.is(collections(), 2, 'the second drop comes too soon after the first');
  r.stop();
});

test('the default collection is a full gc, available without --expose-gc', (t) => {
  const collect = fullCollection();
  collect();
  const base = process.memoryUsage().heapUsed;
  let garbage: unknown[] | undefined = Array.from({ length: 200_000 }, (_, i) => ({ i, s: `x${i}` }));
  t.true(garbage.length > 0 && process.memoryUsage().heapUsed > base + 5 * 1024 * 1024, 'the garbage is on the heap');
  garbage = undefined;
  collect();
  t.true(process.memoryUsage().heapUsed < base + 2 * 1024 * 1024, 'and gone after the collection');
  t.is(garbage, undefined);
});

/** The value of `series` in a rendered registry, or undefined. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

test('the process metrics count garbage collections by kind', async (t) => {
  const registry = new MetricsRegistry('test');
  registry.processMetrics();
  const before = sample(registry.render(), 'nodejs_gc_runs_total{kind="major"}') ?? 0;
  fullCollection()();
  // The observer hears of a collection after it, on a later turn.
  await sleep(50);
  const text = registry.render();
  t.true((sample(text, 'nodejs_gc_runs_total{kind="major"}') ?? 0) >= before + 1, text);
  t.true((sample(text, 'nodejs_gc_seconds_total{kind="major"}') ?? 0) > 0);
  t.regex(text, /# TYPE nodejs_gc_runs_total counter/);
  // A second registry (server and agent in one process) reports the same counts, not half.
  const other = new MetricsRegistry('other');
  other.processMetrics();
  t.is(sample(other.render(), 'nodejs_gc_runs_total{kind="major"}'), sample(text, 'nodejs_gc_runs_total{kind="major"}'));
});

test('the process metrics count the event loop\'s active resources by type', (t) => {
  const registry = new MetricsRegistry('test');
  registry.processMetrics();
  const timeouts = () => sample(registry.render(), 'nodejs_active_resources{type="Timeout"}') ?? 0;
  const before = timeouts();
  const timers = [setTimeout(() => undefined, 60_000), setTimeout(() => undefined, 60_000)];
  t.is(timeouts(), before + 2, 'two more timers');
  for (const timer of timers) clearTimeout(timer);
  t.is(timeouts(), before, 'and none once they are cleared');
  t.regex(registry.render(), /# TYPE nodejs_active_resources gauge/);
});

test('the binaries widen heap growth unless the operator chose a value', (t) => {
  t.false(heapGrowthChosen([], ''));
  t.false(heapGrowthChosen(['--single-threaded-gc'], '--max-old-space-size=512'));
  t.false(heapGrowthChosen(['--heap-growing-percentage=5'], ''), 'another flag with the same start');
  t.true(heapGrowthChosen(['--single-threaded-gc', '--heap-growing-percent=50'], ''));
  t.true(heapGrowthChosen(['--heap_growing_percent=50'], ''), 'V8 takes underscores too');
  t.true(heapGrowthChosen([], '--max-old-space-size=512  --heap-growing-percent=0'));
  t.false(widenHeapGrowth(['--heap-growing-percent=50'], ''), 'left as the operator set it');
  t.true(widenHeapGrowth([], ''));
});
