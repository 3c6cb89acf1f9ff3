#!/usr/bin/env node
/**
 * The fuzz properties of `npm test` (harness/fuzz-properties.ts) with a long budget: many
 * more cases per property, or as many as fit in a time limit. Each failure is printed with
 * fast-check's report: the shrunk counterexample and the seed and path that reproduce it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { METADATA_PROPERTIES, MUX_PROPERTIES, WIRE_PROPERTIES, httpConnectProperties, type FuzzProperty } from '../harness/fuzz-properties.js';
import { hostilePeerProperty, startHostileSystem, type HostileSystem } from '../harness/fuzz-system.js';
import { setLogLevel } from '../lib/observe/log.js';

const HELP = `usage: node dist/bench/fuzz.js [--runs N] [--seconds S] [--seed N] [--only TEXT] [--no-shrink] [--help]

Runs every fuzz property of the test suite (packet codecs, gRPC framing, flow-control and
call metadata, agent identifiers, WINDOW_UPDATE handling, HTTP-CONNECT request heads, and
hostile agents and gRPC clients against a real tunnel-server while a legitimate transfer
runs through it) with a larger budget, and prints one line per property. Here the server
must let go of a gone hostile peer's streams within 15 s; npm test allows up to its
keepalive bound (50 s). A failure prints the counterexample
and the seed that reproduces it; the exit status is then 1.

  --runs N      cases per property (default: 20 times the test suite's; properties whose
                cases take real time, the HTTP-CONNECT and hostile-peer ones, get a
                fifth of that)
  --seconds S   stop each property when its share of S seconds is spent (the cases run so
                far count); with --runs, whichever comes first
  --seed N      start from this seed (as printed with a failure) to reproduce it
  --only TEXT   run only the properties whose name contains TEXT
  --no-shrink   report the first failing case as it came, without shrinking it
                (quicker where cases are slow)
  --help        this text
`;

function parseCli(argv: string[]): { runs?: number; seconds?: number; seed?: number; only?: string; noShrink: boolean; help: boolean } {
  const { values } = parseArgs({
    args: argv,
    options: {
      runs: { type: 'string' },
      seconds: { type: 'string' },
      seed: { type: 'string' },
      only: { type: 'string' },
      'no-shrink': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  const number = (flag: string, text: string | undefined, integer: boolean, positive: boolean) => {
    if (text === undefined) return undefined;
    const n = Number(text);
    if (!Number.isFinite(n) || (integer && !Number.isSafeInteger(n)) || (positive && n <= 0)) {
      throw new Error(`--${flag}=${text} must be ${positive ? 'a positive' : 'an'} ${integer ? 'integer' : 'number'}`);
    }
    return n;
  };
  return {
    runs: number('runs', values.runs, true, true),
    seconds: number('seconds', values.seconds, false, true),
    seed: number('seed', values.seed, true, false),
    only: values.only,
    noShrink: values['no-shrink'] ?? false,
    help: values.help ?? false,
  };
}

async function main(): Promise<number> {
  let cli;
  try {
    cli = parseCli(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (cli.help) {
    process.stdout.write(HELP);
    return 0;
  }
  setLogLevel('warn');
  const dir = mkdtempSync(join(os.tmpdir(), 'tunnel-fuzz-'));
  let system: HostileSystem | undefined;
  try {
    const hostile = hostilePeerProperty(() => system!, 12);
    const all: FuzzProperty[] = [...WIRE_PROPERTIES, ...METADATA_PROPERTIES, ...MUX_PROPERTIES, ...httpConnectProperties(dir), hostile];
    const chosen = all.filter((p) => cli.only === undefined || p.name.includes(cli.only));
    if (chosen.length === 0) {
      process.stderr.write(`no property's name contains "${cli.only}"; the properties are:\n${all.map((p) => `  ${p.name}\n`).join('')}`);
      return 2;
    }
    const share = cli.seconds === undefined ? undefined : (cli.seconds * 1000) / chosen.length;
    let failures = 0;
    for (const p of chosen) {
      // With only a time limit, the runs are what fits in it.
      const numRuns = cli.runs ?? (share !== undefined ? Number.MAX_SAFE_INTEGER : p.runs * (p.slow ? 4 : 20));
      if (p === hostile) system ??= await startHostileSystem();
      const started = Date.now();
      const result = await p.check({ numRuns, seed: cli.seed, timeLimitMs: share, noShrink: cli.noShrink });
      const seconds = ((Date.now() - started) / 1000).toFixed(1);
      process.stdout.write(`${result.failed ? 'FAIL' : 'ok  '} ${String(result.numRuns).padStart(8)} runs ${seconds.padStart(7)} s  seed ${result.seed}  ${p.name}\n`);
      if (result.failed) {
        failures++;
        process.stdout.write(`${result.report.replace(/^/gm, '     ')}\n     reproduce: node dist/bench/fuzz.js --only ${JSON.stringify(p.name.slice(0, 40))} --seed ${result.seed}\n\n`);
      }
    }
    process.stdout.write(failures === 0 ? `all ${chosen.length} properties held\n` : `${failures} of ${chosen.length} properties failed\n`);
    return failures === 0 ? 0 : 1;
  } finally {
    await system?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then((code) => { process.exitCode = code; }, (err: unknown) => {
  process.stderr.write(`fuzz: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
