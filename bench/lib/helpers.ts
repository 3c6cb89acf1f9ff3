/**
 * Starts the bench's helper child processes (target, relay, delay relay, simulated agents):
 * compiled scripts next to this file, run with process.execPath and BENCH_NODE_ARGS, each
 * reporting its port (or that it is ready) over IPC.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { stopChild, track, type Scope } from './scope.js';
import type { LocalPkiPaths } from '../../lib/pki/local-pki.js';
import { BENCH_NODE_ARGS } from './limits.js';

export interface Helper {
  name: string;
  pid: number;
  port: number;
  child: ChildProcess;
}

const SCRIPTS = {
  target: 'target-process.js',
  relay: 'relay-process.js',
  'tls-relay': 'tls-relay-process.js',
  'delay-relay': 'delay-relay-process.js',
} as const;

export async function startHelper(scope: Scope, kind: keyof typeof SCRIPTS, args: string[] = [], name: string = kind): Promise<Helper> {
  return forkHelper(scope, fileURLToPath(new URL(`./${SCRIPTS[kind]}`, import.meta.url)), args, name);
}

/** Runs `script` as a helper child process that reports its port over IPC; stopped with the scope. */
export async function forkHelper(scope: Scope, script: string, args: string[], name: string): Promise<Helper> {
  const child = fork(script, args, { execArgv: BENCH_NODE_ARGS, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  track(name, child);
  scope.defer(name, () => stopChild(child));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not report its port within 10 s`)), 10_000);
    child.once('message', (message: { port?: number }) => {
      clearTimeout(timer);
      if (typeof message.port === 'number') resolve(message.port);
      else reject(new Error(`${name} sent ${JSON.stringify(message)}`));
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? signal}) before reporting its port`));
    });
  });
  return { name, pid: child.pid!, port, child };
}

/**
 * A helper that takes commands over IPC instead of serving a port: it reports once when it is
 * ready, then answers each command with one message.
 */
export interface Worker<Command, Report> {
  name: string;
  pid: number;
  child: ChildProcess;
  /** What it reported when it was ready. */
  ready: Report;
  /** Sends a command and resolves with the answer (commands are answered in turn, one at a time). */
  request(command: Command, timeoutMs: number): Promise<Report>;
}

/** Runs `script` as a helper child process driven over IPC; stopped with the scope. */
export async function forkWorker<Command, Report>(scope: Scope, script: string, args: string[], name: string, readyTimeoutMs = 30_000): Promise<Worker<Command, Report>> {
  const child = fork(script, args, { execArgv: BENCH_NODE_ARGS, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  track(name, child);
  scope.defer(name, () => stopChild(child));
  const next = (what: string, timeoutMs: number) => new Promise<Report>((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      child.off('message', onMessage).off('exit', onExit);
    };
    const onMessage = (message: unknown) => { done(); resolve(message as Report); };
    const onExit = (code: number | null, signal: string | null) => { done(); reject(new Error(`${name} exited (${code ?? signal}) ${what}`)); };
    const timer = setTimeout(() => { done(); reject(new Error(`${name} did not answer within ${timeoutMs / 1000} s ${what}`)); }, timeoutMs);
    child.on('message', onMessage).on('exit', onExit);
  });
  const ready = await next('before it was ready', readyTimeoutMs);
  return {
    name,
    pid: child.pid!,
    child,
    ready,
    request: (command, timeoutMs) => {
      const answer = next(`after ${JSON.stringify(command)}`, timeoutMs);
      child.send(command as object);
      return answer;
    },
  };
}

export const startTarget = (scope: Scope, name = 'target') => startHelper(scope, 'target', [], name);

export const startRelay = (scope: Scope, targetPort: number, name = 'relay') =>
  startHelper(scope, 'relay', [`--target-port=${targetPort}`], name);

/** A relay terminating mTLS with the workspace's server certificate (see tls-relay-process.ts). */
export const startTlsRelay = (scope: Scope, targetPort: number, pki: LocalPkiPaths, name = 'mTLS relay') =>
  startHelper(scope, 'tls-relay', [`--target-port=${targetPort}`, `--cert=${pki.serverCert}`, `--key=${pki.serverKey}`, `--ca=${pki.caCert}`], name);

export const startDelayRelay = (scope: Scope, targetPort: number, delayMs: number, name = 'delay-relay') =>
  startHelper(scope, 'delay-relay', [`--target-port=${targetPort}`, `--delay-ms=${delayMs}`], name);
