/**
 * Command-line parsing shared by every binary: node:util parseArgs in strict mode, plus
 * --help, --version, and errors that tell the operator what to type instead.
 */
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import { UsageError } from '../common/errors.js';
import { processLine } from '../observe/log.js';

export interface FlagSpec {
  type: 'string' | 'boolean';
  /** Shown in --help; also the value when the flag is absent. */
  default?: string | boolean;
  /** The flag may be given several times; its value is then an array. */
  multiple?: boolean;
  /** One line for --help. */
  help: string;
  /** Placeholder for the value in --help, e.g. PATH or PORT. */
  metavar?: string;
}

export type FlagSpecs = Record<string, FlagSpec>;

export type FlagValues<S extends FlagSpecs> = {
  [K in keyof S]: S[K]['multiple'] extends true
    ? string[]
    : S[K]['type'] extends 'boolean' ? boolean : S[K]['default'] extends string ? string : string | undefined;
};


export interface CommandInfo {
  name: string;
  summary: string;
  /** Extra text after the flag list (examples). */
  epilog?: string;
}

export function packageVersion(): string {
  const url = new URL('../../../package.json', import.meta.url);
  try {
    return (JSON.parse(readFileSync(url, 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

export function usage(info: CommandInfo, specs: FlagSpecs): string {
  const rows = Object.entries(specs).map(([name, spec]) => {
    const left = spec.type === 'boolean' ? `--${name}${spec.default === true ? '=true|false' : ''}` : `--${name}=${spec.metavar ?? 'VALUE'}`;
    const def = spec.default !== undefined && spec.default !== '' && spec.default !== false
      ? ` (default ${String(spec.default)})` : '';
    const many = spec.multiple ? ' (repeatable)' : '';
    return [left, `${spec.help}${def}${many}`] as const;
  });
  rows.push(['--help', 'print this help and exit'], ['--version', 'print the version and exit']);
  const width = Math.max(...rows.map(([left]) => left.length)) + 2;
  const lines = rows.map(([left, right]) => `  ${left.padEnd(width)}${right}`);
  return `Usage: ${info.name} [flags]\n\n${info.summary}\n\nFlags:\n${lines.join('\n')}\n${info.epilog ? `\n${info.epilog}\n` : ''}`;
}

/**
 * Parses argv against specs. Prints help or version and exits when asked; throws
 * UsageError for unknown flags, missing values and positional arguments.
 */
export function parseFlags<S extends FlagSpecs>(info: CommandInfo, specs: S, argv: string[]): FlagValues<S> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(usage(info, specs));
    process.exit(0);
  }
  if (argv.includes('--version')) {
    process.stdout.write(`${info.name} ${packageVersion()}\n`);
    process.exit(0);
  }
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }> = {};
  for (const [name, spec] of Object.entries(specs)) options[name] = { type: spec.type, multiple: spec.multiple ?? false };
  const { args, switchedOff } = booleanValues(specs, argv, info.name);
  let parsed;
  try {
    parsed = parseArgs({ args, options, strict: true, allowPositionals: false });
  } catch (err) {
    const message = (err as Error).message.replace(/\. To specify a positional argument.*$/s, '');
    throw new UsageError(`${message}. Run '${info.name} --help' for the list of flags.`);
  }
  const values: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(specs)) {
    const given = switchedOff.has(name) ? false : (parsed.values as Record<string, unknown>)[name];
    if (given !== undefined) values[name] = given;
    else if (spec.multiple) values[name] = [];
    else values[name] = spec.default ?? (spec.type === 'boolean' ? false : undefined);
  }
  return values as FlagValues<S>;
}

const TRUE_WORDS = new Set(['true', '1', 'yes', 'on']);
const FALSE_WORDS = new Set(['false', '0', 'no', 'off']);

/**
 * Boolean flags also take a value, as Go's flags do (`--single-stream=false`): a true value
 * becomes the bare flag, a false one is taken out of argv and noted.
 */
function booleanValues(specs: FlagSpecs, argv: string[], command: string): { args: string[]; switchedOff: Set<string> } {
  const switchedOff = new Set<string>();
  const args: string[] = [];
  for (const arg of argv) {
    const match = /^--([^=]+)=(.*)$/.exec(arg);
    if (!match || specs[match[1]]?.type !== 'boolean') {
      args.push(arg);
      continue;
    }
    const [, name, value] = match as unknown as [string, string, string];
    if (TRUE_WORDS.has(value.toLowerCase())) {
      args.push(`--${name}`);
      switchedOff.delete(name);
    } else if (FALSE_WORDS.has(value.toLowerCase())) {
      switchedOff.add(name);
    } else {
      throw new UsageError(`--${name}=${value} is not true or false. Run '${command} --help' for the list of flags.`);
    }
  }
  return { args, switchedOff };
}

/** Parses a TCP port flag: 0 (any free port) to 65535. */
export function parsePort(flag: string, value: string): number {
  const port = Number(value);
  if (!/^\d+$/.test(value) || port > 65535) {
    throw new UsageError(`--${flag}=${value} is not a port number: give 0 to 65535 (0 picks a free port)`);
  }
  return port;
}

/** Parses a port flag that "off" (or leaving it out) turns off. */
export function parseOptionalPort(flag: string, value: string | undefined): number | undefined {
  if (value === undefined || value === 'off') return undefined;
  return parsePort(flag, value);
}

/** Parses a whole number of at least `min`. */
export function parseCount(flag: string, value: string, min: number): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < min) throw new UsageError(`--${flag}=${value} must be a whole number >= ${min}`);
  return n;
}

/** Parses a duration such as 5s, 500ms, 1m or a plain number of seconds. */
export function parseDuration(flag: string, value: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value.trim());
  if (!match) throw new UsageError(`--${flag}=${value} is not a duration: use e.g. 500ms, 5s, 2m`);
  const n = Number(match[1]);
  const unit = match[2] ?? 's';
  return n * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[unit]!;
}

/** The kernel counts TCP keepalive idle time in whole seconds, up to 32767. */
const MAX_KEEPALIVE_S = 32_767;

/** Parses a TCP keepalive flag: 0 (off), or 1 s to 32767 s in whole seconds. */
export function parseKeepAlive(flag: string, value: string): number {
  const ms = parseDuration(flag, value);
  if (ms !== 0 && (ms < 1000 || ms > MAX_KEEPALIVE_S * 1000 || ms % 1000 !== 0)) {
    throw new UsageError(`--${flag}=${value} is not a keepalive time: give whole seconds from 1s to ${MAX_KEEPALIVE_S}s, or 0 to turn keepalive off`);
  }
  return ms;
}

/** Splits a comma-separated list flag, dropping empty items. */
export function parseList(value: string | undefined): string[] {
  return (value ?? '').split(',').map((s) => s.trim()).filter(Boolean);
}

/**
 * Runs a binary's main function: prints UsageError and other startup errors as one clear
 * line and sets the exit status, so no binary ever dies with a raw stack trace.
 */
export function runMain(name: string, main: () => Promise<void>): void {
  quietKnownWarnings();
  main().catch((err: unknown) => {
    if (err instanceof UsageError) {
      process.stderr.write(processLine(name, 'error', err.message, `${name}: ${err.message}`));
      process.exit(2);
    }
    const message = (err as Error)?.message ?? String(err);
    process.stderr.write(processLine(name, 'error', message, `${name}: ${message}`));
    process.exit(1);
  });
}

/**
 * Calls stop() on the first SIGINT or SIGTERM and exits when it settles; a second signal
 * exits at once with status 1.
 */
export function onShutdownSignal(stop: () => Promise<void>): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) process.exit(1);
    stopping = true;
    const received = `received ${signal}, shutting down`;
    process.stderr.write(processLine('process', 'info', received, received));
    stop().then(() => process.exit(0), (err: unknown) => {
      const failed = `shutdown failed: ${(err as Error)?.message ?? String(err)}`;
      process.stderr.write(processLine('process', 'error', failed, failed));
      process.exit(1);
    });
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}

/**
 * grpc-js passes an IP address as the TLS server name when the target is an IP (the usual
 * case on loopback and behind a Service IP), and Node warns about it on every connection.
 * The warning says nothing an operator can act on, so the binaries drop that one.
 */
function quietKnownWarnings(): void {
  const printers = process.listeners('warning');
  process.removeAllListeners('warning');
  process.on('warning', (warning: Error & { code?: string }) => {
    if (warning.code === 'DEP0123') return;
    for (const print of printers) print(warning);
  });
}
