/**
 * CPU time of the processes taking part in a measurement (from /proc/<pid>/stat), so a
 * figure can say whether a path was CPU-bound and where the CPU went.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { now } from './measure.js';

let ticksPerSecond: number | undefined;

function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** User + system CPU time of a process in ms, or NaN when it cannot be read. */
export function cpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicks();
  } catch {
    return NaN;
  }
}

export interface CpuUse {
  name: string;
  ms: number;
  /** Share of one core over the measured interval. */
  percent: number;
}

/** Starts counting CPU time for the named pids; call the result to stop. */
export function cpuMeter(pids: Record<string, number>): () => CpuUse[] {
  const start = now();
  const before = Object.entries(pids).map(([name, pid]) => ({ name, pid, ms: cpuMs(pid) }));
  return () => {
    const elapsed = now() - start;
    return before.map(({ name, pid, ms }) => {
      const used = cpuMs(pid) - ms;
      return { name, ms: used, percent: elapsed > 0 ? (100 * used) / elapsed : NaN };
    });
  };
}

/** `client 72%, server 65%, agent 25%` */
export function formatCpu(use: CpuUse[]): string {
  return use.filter((u) => Number.isFinite(u.percent)).map((u) => `${u.name} ${u.percent.toFixed(0)}%`).join(', ');
}

/** `client 4.5, server 4.1, agent 1.6 ms` per unit of work (e.g. per cycle). */
export function formatCpuPer(use: CpuUse[], count: number): string {
  return `${use.filter((u) => Number.isFinite(u.ms)).map((u) => `${u.name} ${(u.ms / count).toFixed(2)}`).join(', ')} ms`;
}
