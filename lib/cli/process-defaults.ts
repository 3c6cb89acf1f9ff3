/**
 * What the server and agent binaries set for their own process, each behind a flag
 * (--process-tuning, --reclaim-memory): the library sets none of it, since a program that
 * embeds a TunnelServer or TunnelAgent owns its runtime.
 */
import { raiseSocketHighWaterMark } from '../mux/splice.js';
import { MemoryReclaimer } from '../observe/memory-reclaim.js';
import type { Logger } from '../observe/log.js';
import { widenHeapGrowth } from './heap-growth.js';

/** Before any socket is opened: the socket high-water mark and V8's heap growth. */
export function applyProcessDefaults(): void {
  raiseSocketHighWaterMark();
  widenHeapGrowth();
}

/** The binaries' process policy, from their flags; returns what to stop on shutdown. */
export function applyProcessPolicy(flags: { 'process-tuning': boolean; 'reclaim-memory': boolean }, openConnections: () => number, log: Logger): { stop(): void } {
  if (flags['process-tuning']) applyProcessDefaults();
  const reclaimer = flags['reclaim-memory'] ? new MemoryReclaimer(openConnections, log) : undefined;
  log.info('process policy', { processTuning: flags['process-tuning'] ? 'on' : 'off', reclaimMemory: reclaimer ? 'on' : 'off' });
  return { stop: () => reclaimer?.stop() };
}
