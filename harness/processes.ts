/**
 * The real binaries as child processes, and what to read from them: the harness that the
 * tests and the bench share (neither imports the other's helpers).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { ensureLocalPki, type LocalPkiPaths } from '../lib/pki/local-pki.js';

/** The repository root (this file runs from dist/harness/). */
export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** The compiled binaries. */
export const BIN = join(ROOT, 'dist', 'bin');
/** The demo that `npm start` runs. */
export const DEMO = join(ROOT, 'dist', 'demo', 'main.js');

/** A binary by name (tunnel-server, ...), or a script by its absolute path. */
function script(binary: string): string {
  return binary.startsWith('/') ? binary : join(BIN, `${binary}.js`);
}

export interface Workspace {
  dir: string;
  pki: LocalPkiPaths;
  cleanup(): void;
}

/** A temp dir with a local PKI, shared by the processes of one test. */
export async function workspace(): Promise<Workspace> {
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-test-'));
  const pki = await ensureLocalPki({ stateDir: dir });
  return { dir, pki, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export class Proc {
  output = '';
  readonly exited: Promise<number | null>;

  constructor(readonly name: string, readonly child: ChildProcess) {
    child.stdout?.on('data', (d: Buffer) => { this.output += d.toString(); });
    child.stderr?.on('data', (d: Buffer) => { this.output += d.toString(); });
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  /** Waits until the output matches `pattern`; returns the match. */
  async waitFor(pattern: RegExp, timeoutMs = 15_000, from = 0): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = this.output.slice(from).match(pattern);
      if (match) return match;
      if (this.child.exitCode !== null) throw new Error(`${this.name} exited (${this.child.exitCode}) before printing ${pattern}:\n${this.output}`);
      if (Date.now() > deadline) throw new Error(`${this.name} did not print ${pattern} within ${timeoutMs} ms:\n${this.output}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

/**
 * Node options of the started binaries: the recommended `--single-threaded-gc` and
 * `--max-semi-space-size=4` (see the README and docs/performance.md), then any from TUNNEL_NODE_ARGS, e.g.
 * "--cpu-prof --cpu-prof-dir=/tmp/prof" to profile server and agent under a bench scenario.
 */
const NODE_ARGS = ['--single-threaded-gc', '--max-semi-space-size=4', ...(process.env.TUNNEL_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? [])];

/**
 * jemalloc for the started binaries, e.g. TUNNEL_JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
 * (Debian's libjemalloc2), with purging in a background thread: how a deployment that wants
 * memory freed after a mass close back from the process runs them (see docs/performance.md).
 */
const JEMALLOC = process.env.TUNNEL_JEMALLOC;
const BINARY_ENV = JEMALLOC
  ? { ...process.env, LD_PRELOAD: JEMALLOC, MALLOC_CONF: process.env.MALLOC_CONF ?? 'background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0' }
  : process.env;

/** How the binaries run: their Node options, and the allocator preloaded into them, if any. */
export const BINARY_RUNTIME: { nodeArgs: readonly string[]; preload?: string } = { nodeArgs: NODE_ARGS, ...(JEMALLOC ? { preload: JEMALLOC } : {}) };

export function run(binary: string, args: string[]): Proc {
  const child = spawn(process.execPath, [...NODE_ARGS, script(binary), ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: BINARY_ENV });
  return new Proc(binary, child);
}

/** Runs a binary to completion. */
export async function runToEnd(binary: string, args: string[], timeoutMs = 30_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [script(binary), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const [code] = await once(child, 'exit') as [number | null];
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/** GET on 127.0.0.1:port; resolves with status and body. */
export function httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path, timeout: 5_000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => { body += d.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

/** Reads a metric's value from a /metrics endpoint. */
export async function metric(port: number, name: string): Promise<number> {
  const { body } = await httpGet(port, '/metrics');
  const line = body.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  if (!line) throw new Error(`metric ${name} not found`);
  return Number(line.split(' ').pop());
}

