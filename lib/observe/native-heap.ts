/**
 * Hands the C heap's free pages back to the operating system.
 *
 * A TLS connection's native state (OpenSSL's objects and buffers, Node's BIOs, V8's handles
 * for its socket) is allocated by glibc's malloc in chunks of a few KiB, interleaved with
 * whatever else was allocated at the time. When 10,000 connections close, their chunks are
 * freed, but glibc only gives memory back from the top of each arena, and the top stays in
 * use, so the server's resident size stayed far above its start after its connections
 * closed. `malloc_trim` walks every arena and releases each free page wherever it lies
 * (bench scenario memory, "RSS after close"; docs/performance.md). Node has no
 * binding for it, so it is called through koffi, an optional dependency with prebuilt
 * binaries. Where koffi or glibc is missing (another libc, another platform) nothing is
 * released and the process runs as before; other allocators (musl's, jemalloc) return free
 * pages by themselves.
 */
import { createRequire } from 'node:module';

export type Release = () => boolean;

/** Either the release function, or why there is none. */
export type NativeHeapRelease = { release: Release } | { unavailable: string };

let loaded: NativeHeapRelease | undefined;

/** Loads `malloc_trim` from glibc once; later calls return the same result. */
export function nativeHeapRelease(): NativeHeapRelease {
  loaded ??= load();
  return loaded;
}

function load(): NativeHeapRelease {
  if (process.platform !== 'linux') return { unavailable: `the platform is ${process.platform}, not Linux with glibc` };
  let koffi: typeof import('koffi');
  try {
    koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');
  } catch (err) {
    return { unavailable: `the optional package koffi did not load (${firstLine(err)}); reinstall with optional dependencies (npm ci --include=optional)` };
  }
  try {
    const mallocTrim = koffi.load('libc.so.6').func('int malloc_trim(size_t pad)');
    return { release: () => mallocTrim(0) === 1 };
  } catch (err) {
    return { unavailable: `malloc_trim could not be loaded from glibc's libc.so.6 (${firstLine(err)})` };
  }
}

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0];
}
