/**
 * What the binaries (server, agent, demo) set for their own process at start-up, before
 * they open a socket: the library leaves both alone, since a program that embeds it owns
 * its runtime.
 */
import { raiseSocketHighWaterMark } from '../mux/splice.js';
import { widenHeapGrowth } from './heap-growth.js';

export function applyProcessDefaults(): void {
  raiseSocketHighWaterMark();
  widenHeapGrowth();
}
