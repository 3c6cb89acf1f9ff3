/**
 * How far V8 lets the heap grow between full collections, set by the binaries at start-up
 * (a program that embeds the library owns its runtime, so the library leaves it alone).
 *
 * After a full collection V8 sets the next one's threshold from the live heap, and a heap as
 * small as the tunnel's (code and connection objects) gets little headroom. Memory outside
 * the heap counts against that headroom too, from buffers to TLS and HTTP/2 state, and
 * buffers pass through the tunnel at hundreds of MB/s, so nearly every swing of buffered
 * bytes started a full collection. At V8's own largest growth factor (4, which it picks for
 * large heaps when collections are cheap) the headroom is three times the live heap and
 * full collections become rare. The bulk and aggregate scenarios of bench/ report them;
 * docs/performance.md has the A/B.
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
