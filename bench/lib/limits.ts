/**
 * How the bench's own processes run: the open-files limit, and V8's collector.
 *
 * Node cannot raise its own rlimit, so when the soft limit is below the hard one the bench
 * re-executes itself under `ulimit -n <hard>`; the tunnel binaries and helpers it starts
 * inherit the raised limit.
 *
 * The bench's client and helpers (targets, relays) run with BENCH_NODE_ARGS, as the tunnel
 * binaries do (see docs/performance.md): on a machine with few cores, a collector's helper threads
 * take CPU from the processes being measured. With V8's default collector the bench's
 * client spent 1.55 to 1.85 ms of CPU per MiB it downloaded, 0.6 to 0.8 of them in those
 * threads; with `--single-threaded-gc`, 0.93 to 1.04. Flags go on Node's command line, so
 * the bench re-executes itself when they are missing as well.
 */
import { execFileSync, spawnSync } from 'node:child_process';

const REEXEC_ENV = 'TUNNEL_BENCH_REEXECUTED';
/** No scenario needs more than this. */
const WANTED = 65_536;

/** Node flags of the bench process and of every helper it starts. */
export const BENCH_NODE_ARGS = ['--single-threaded-gc'];

export function fdLimits(): { soft: number; hard: number } {
  const out = execFileSync('sh', ['-c', 'ulimit -Sn; ulimit -Hn'], { encoding: 'utf8' }).trim().split('\n');
  const parse = (v: string | undefined) => (v === 'unlimited' ? Number.POSITIVE_INFINITY : Number(v));
  return { soft: parse(out[0]), hard: parse(out[1]) };
}

/**
 * Re-runs this process with a higher soft limit and BENCH_NODE_ARGS, when either is missing
 * and it was not done yet; returns the exit status of the re-run, or undefined to carry on
 * in this process.
 */
export function reexecForBench(): number | undefined {
  if (process.env[REEXEC_ENV]) return undefined;
  const { soft, hard } = fdLimits();
  const want = Math.min(hard, WANTED);
  const raise = soft < want;
  const missing = BENCH_NODE_ARGS.filter((flag) => !process.execArgv.includes(flag));
  if (!raise && missing.length === 0) return undefined;
  const node = [process.execPath, ...process.execArgv, ...missing, ...process.argv.slice(1)];
  const options = { stdio: 'inherit' as const, env: { ...process.env, [REEXEC_ENV]: '1' } };
  const result = raise
    ? spawnSync('sh', ['-c', `ulimit -n ${want} && exec "$0" "$@"`, ...node], options)
    : spawnSync(node[0], node.slice(1), options);
  if (result.error) return undefined; // could not re-run: carry on as we are
  return result.status ?? 1;
}
