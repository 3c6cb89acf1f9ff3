/**
 * Teardown for benchmark scenarios: a Scope collects what a scenario started (child
 * processes, temp dirs, sockets) and undoes it in reverse order, on success and on error.
 * Every child process the bench starts is also tracked globally, so Ctrl-C or a crash of the
 * bench kills them instead of leaving them behind.
 */
import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, rmSync } from 'node:fs';

const live = new Map<number, { name: string; child: ChildProcess }>();
const tempDirs = new Set<string>();

/** A temp dir to remove if the bench exits before its scenario's teardown does. */
export function trackDir(dir: string): () => void {
  tempDirs.add(dir);
  return () => {
    rmSync(dir, { recursive: true, force: true });
    tempDirs.delete(dir);
  };
}

function removeTrackedDirs(): void {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

/** Tracks a child so that it is killed if the bench exits without stopping it. */
export function track(name: string, child: ChildProcess): void {
  if (child.pid === undefined) return;
  const pid = child.pid;
  live.set(pid, { name, child });
  child.once('exit', () => live.delete(pid));
}

/** Kills every tracked child still running (by its pid). */
export function killTracked(signal: NodeJS.Signals = 'SIGKILL'): void {
  for (const { child } of live.values()) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        child.kill(signal);
      } catch {
        // already gone
      }
    }
  }
}

let handlersInstalled = false;

/** Installs exit and signal handlers that kill tracked children. */
export function installExitHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', () => {
    killTracked('SIGKILL');
    removeTrackedDirs();
  });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      process.stderr.write(`\n${signal}: stopping the benchmark's child processes\n`);
      killTracked('SIGKILL');
      process.exit(128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 1));
    });
  }
}

/** Stops a child: SIGTERM, then SIGKILL after `graceMs`; resolves once it exited (bounded). */
export async function stopChild(child: ChildProcess, graceMs = 5_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  if (await within(exited, graceMs)) return;
  child.kill('SIGKILL');
  if (!(await within(exited, 5_000))) throw new Error(`process ${child.pid} did not exit after SIGKILL`);
}

async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), ms); });
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export class Scope {
  private readonly cleanups: Array<{ what: string; run: () => unknown }> = [];

  /** Registers a teardown step; steps run in reverse order of registration. */
  defer(what: string, run: () => unknown): void {
    this.cleanups.push({ what, run });
  }

  /** Runs every teardown step (each bounded to 20 s); returns the problems it met. */
  async close(): Promise<string[]> {
    const problems: string[] = [];
    for (const { what, run } of this.cleanups.splice(0).reverse()) {
      try {
        const done = await within(Promise.resolve().then(run), 20_000);
        if (!done) problems.push(`teardown of ${what} took more than 20 s`);
      } catch (err) {
        problems.push(`teardown of ${what} failed: ${(err as Error).message}`);
      }
    }
    return problems;
  }
}

/** Pids of this process's live children (from /proc), for the leftover check. */
export function childPids(parent = process.pid): number[] {
  const pids: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return pids;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // Fields after the command name, which is in parentheses and may contain spaces.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const state = fields[0];
      const ppid = Number(fields[1]);
      if (ppid === parent && state !== 'Z') pids.push(Number(entry));
    } catch {
      // the process went away while we looked
    }
  }
  return pids;
}

/**
 * After a scenario: any child of ours still running is a leak. Kills the ones we started
 * (tracked pids only) and reports them.
 */
export async function reapLeftovers(): Promise<string[]> {
  const leftovers = childPids().filter((pid) => live.has(pid));
  const names = leftovers.map((pid) => `${live.get(pid)!.name} (pid ${pid})`);
  for (const pid of leftovers) {
    const entry = live.get(pid);
    if (entry) await stopChild(entry.child, 1_000).catch(() => undefined);
  }
  return names;
}
