/**
 * Resident memory of a child process: process_resident_memory_bytes from its /metrics if it
 * exports it, else VmRSS from /proc/<pid>/status.
 */
import { readFileSync } from 'node:fs';
import { metric } from '../../harness/processes.js';

export interface Rss {
  bytes: number;
  source: 'metrics' | 'proc';
}

export function procRss(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!match) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}

export async function rssOf(pid: number, healthPort: number): Promise<Rss> {
  try {
    return { bytes: await metric(healthPort, 'process_resident_memory_bytes'), source: 'metrics' };
  } catch {
    return { bytes: procRss(pid), source: 'proc' };
  }
}
