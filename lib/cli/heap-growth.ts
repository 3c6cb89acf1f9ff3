/**
 * How far V8 lets the heap grow between full collections, set by the binaries at start-up
 * (a program that embeds the library owns its runtime, so the library leaves it alone).
 *
 * After a full collection V8 sets the next one's threshold from the live heap: for a heap as
 * small as the tunnel's (10 to 20 MB of code and connection objects) about 16 MB above it.
 * Memory outside the heap counts against that headroom too, from buffers to TLS and HTTP/2
 * state, and buffers pass through the tunnel at hundreds of MB/s: in the agent, at 100
 * concurrent downloads, it swings between 15 and 63 MiB as young collections free it. So
 * nearly every swing started a full collection: 68 of them for 2 GiB, a quarter of the
 * agent's CPU. At V8's own largest growth factor (4, which it picks for large heaps when
 * collections are cheap) the headroom is three times the live heap: 4 to 8 full collections
 * for the same 2 GiB, and 5 to 11% more throughput in the bulk bench (one A/B pair of full
 * runs).
 */
import { setFlagsFromString } from 'node:v8';

/** Growth beyond the live heap, in percent: V8's factor of 4. */
export const HEAP_GROWING_PERCENT = 300;

/** True if the process was started with its own --heap-growing-percent (command line or NODE_OPTIONS). */
export function heapGrowthChosen(execArgv: readonly string[], nodeOptions = ''): boolean {
  return [...execArgv, ...nodeOptions.split(/\s+/)].some((arg) => /^--heap[-_]growing[-_]percent(=|$)/.test(arg));
}

/** Applies HEAP_GROWING_PERCENT unless the operator chose a value; says whether it did. */
export function widenHeapGrowth(execArgv: readonly string[] = process.execArgv, nodeOptions = process.env.NODE_OPTIONS ?? ''): boolean {
  if (heapGrowthChosen(execArgv, nodeOptions)) return false;
  setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  return true;
}
