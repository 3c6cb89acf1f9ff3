/**
 * The open-files limit. Node cannot raise its own rlimit, so when the soft limit is below
 * the hard one the bench re-executes itself under `ulimit -n <hard>`; the tunnel binaries and
 * helpers it starts inherit the raised limit.
 */
import { execFileSync, spawnSync } from 'node:child_process';

const RAISED_ENV = 'TUNNEL_BENCH_FD_RAISED';
/** No scenario needs more than this. */
const WANTED = 65_536;

export function fdLimits(): { soft: number; hard: number } {
  const out = execFileSync('sh', ['-c', 'ulimit -Sn; ulimit -Hn'], { encoding: 'utf8' }).trim().split('\n');
  const parse = (v: string | undefined) => (v === 'unlimited' ? Number.POSITIVE_INFINITY : Number(v));
  return { soft: parse(out[0]), hard: parse(out[1]) };
}

/**
 * Re-runs this process with a higher soft limit when that is possible and not done yet;
 * returns the exit status of the re-run, or undefined to carry on in this process.
 */
export function reexecWithRaisedLimit(): number | undefined {
  if (process.env[RAISED_ENV]) return undefined;
  const { soft, hard } = fdLimits();
  const want = Math.min(hard, WANTED);
  if (!(soft < want)) return undefined;
  const result = spawnSync('sh', ['-c', `ulimit -n ${want} && exec "$0" "$@"`, process.execPath, ...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, [RAISED_ENV]: '1' },
  });
  if (result.error) return undefined; // could not re-run: carry on with the current limit
  return result.status ?? 1;
}
