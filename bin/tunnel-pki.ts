#!/usr/bin/env node
/**
 * tunnel-pki: manage the local PKI in the state directory (init, issue, show). The logic lives
 * in lib/pki; this file only maps sub-commands and flags onto it and prints the results.
 */
import { isIP } from 'node:net';
import { join } from 'node:path';
import { packageVersion, parseFlags, parseList, runMain, type FlagSpecs } from '../lib/cli/flags.js';
import { UsageError } from '../lib/common/errors.js';
import { DEFAULT_LEAF_DAYS } from '../lib/pki/certificates.js';
import {
  defaultStateDir, describeLocalPki, ensureLocalPki, issueFromLocalCa, localCaFingerprint, type IssueKind,
} from '../lib/pki/local-pki.js';

const NAME = 'tunnel-pki';
const KINDS: readonly IssueKind[] = ['client', 'agent', 'server'];

interface SubCommand {
  summary: string;
  run(argv: string[]): Promise<void>;
}

/*
 * Every spec says multiple: false explicitly: parseFlags hands `multiple` straight to
 * node:util parseArgs, which on Node 20 rejects an undefined value.
 */
const stateDirFlag = {
  type: 'string', multiple: false, default: defaultStateDir(), metavar: 'DIR',
  help: 'state directory; the PKI lives in DIR/pki ($TUNNEL_STATE_DIR)',
} as const satisfies FlagSpecs[string];

const initFlags = {
  'state-dir': stateDirFlag,
  'cert-dns-names': { type: 'string', multiple: false, metavar: 'a,b', help: 'extra DNS names for the server certificate (localhost is always in)' },
  'cert-ips': { type: 'string', multiple: false, metavar: 'IP,IP', help: 'extra IP addresses for the server certificate (127.0.0.1 and ::1 are always in)' },
} as const satisfies FlagSpecs;

const issueFlags = {
  kind: { type: 'string', multiple: false, metavar: KINDS.join('|'), help: 'certificate profile: client and agent get clientAuth, server gets serverAuth and clientAuth' },
  name: { type: 'string', multiple: false, metavar: 'NAME', help: 'the common name, and the output file name <NAME>.crt/.key; for --kind agent the cluster (CN tunnel:agent:<NAME>)' },
  'dns-names': { type: 'string', multiple: false, metavar: 'a,b', help: 'DNS subject alternative names' },
  ips: { type: 'string', multiple: false, metavar: 'IP,IP', help: 'IP subject alternative names' },
  'out-dir': { type: 'string', multiple: false, metavar: 'DIR', help: 'where to write the files (default <state-dir>/pki/issued)' },
  days: { type: 'string', multiple: false, default: String(DEFAULT_LEAF_DAYS), metavar: 'N', help: 'validity in days' },
  'state-dir': stateDirFlag,
} as const satisfies FlagSpecs;

const showFlags = { 'state-dir': stateDirFlag } as const satisfies FlagSpecs;

const SUBCOMMANDS: Record<string, SubCommand> = {
  init: {
    summary: 'Create the local CA and the server and client certificates (or reuse them), and print their paths; agents\' come from issue --kind agent, or the agent binary on first use.',
    async run(argv) {
      const flags = parseFlags(info('init', this.summary), initFlags, argv);
      const paths = await ensureLocalPki({
        stateDir: flags['state-dir'],
        dnsNames: parseList(flags['cert-dns-names']),
        ips: ipList('cert-ips', flags['cert-ips']),
      });
      for (const [name, path] of Object.entries(paths)) print(`${name}: ${path}`);
      print(`caFingerprintSha256: ${await localCaFingerprint(paths)}`);
    },
  },
  issue: {
    summary: 'Issue an extra certificate from the local CA (e.g. for another agent or client).',
    async run(argv) {
      const flags = parseFlags(info('issue', this.summary, 'Example: tunnel-pki issue --kind agent --name cluster-a'), issueFlags, argv);
      const stateDir = flags['state-dir'];
      const issued = await issueFromLocalCa(stateDir, {
        kind: parseKind(flags.kind),
        commonName: required('name', flags.name),
        dnsNames: parseList(flags['dns-names']),
        ips: ipList('ips', flags.ips),
        outDir: flags['out-dir'] ?? join(stateDir, 'pki', 'issued'),
        days: parseDays(flags.days),
      });
      print(`cert: ${issued.cert}`);
      print(`key: ${issued.key}`);
    },
  },
  show: {
    summary: 'Print subject, SANs and expiry of each certificate of the local PKI.',
    async run(argv) {
      const flags = parseFlags(info('show', this.summary), showFlags, argv);
      for (const cert of await describeLocalPki(flags['state-dir'])) {
        print(cert.path);
        print(`  subject:  ${cert.subject}`);
        print(`  issuer:   ${cert.issuer}`);
        print(`  dns:      ${cert.dnsNames.join(', ') || '-'}`);
        print(`  ips:      ${cert.ips.join(', ') || '-'}`);
        print(`  expires:  ${cert.notAfter.toISOString()}`);
      }
    },
  },
};

function topLevelUsage(): string {
  const width = Math.max(...Object.keys(SUBCOMMANDS).map((name) => name.length)) + 2;
  const rows = Object.entries(SUBCOMMANDS).map(([name, sub]) => `  ${name.padEnd(width)}${sub.summary}`);
  return `Usage: ${NAME} <sub-command> [flags]\n\nManage the local PKI of tke-anp-tunnel.\n\nSub-commands:\n${rows.join('\n')}\n\n`
    + `Run '${NAME} <sub-command> --help' for its flags.\n`;
}

function info(sub: string, summary: string, epilog?: string) {
  return { name: `${NAME} ${sub}`, summary, epilog };
}

function print(line: string): void {
  process.stdout.write(`${line}\n`);
}

function required(flag: string, value: string | undefined): string {
  if (!value) throw new UsageError(`--${flag} is required. Run '${NAME} issue --help' for the list of flags.`);
  return value;
}

function parseKind(value: string | undefined): IssueKind {
  const kind = required('kind', value);
  if (!(KINDS as readonly string[]).includes(kind)) throw new UsageError(`--kind=${kind} is not a certificate kind: give one of ${KINDS.join(', ')}`);
  return kind as IssueKind;
}

function parseDays(value: string): number {
  if (!/^[1-9]\d*$/.test(value)) throw new UsageError(`--days=${value} is not a number of days: give a whole number > 0, e.g. 365`);
  return Number(value);
}

function ipList(flag: string, value: string | undefined): string[] {
  const ips = parseList(value);
  const bad = ips.find((ip) => isIP(ip) === 0);
  if (bad !== undefined) throw new UsageError(`--${flag}: "${bad}" is not an IP address: give IPv4 or IPv6 addresses separated by commas`);
  return ips;
}

runMain(NAME, async () => {
  const [first, ...rest] = process.argv.slice(2);
  if (first === '--help' || first === '-h') {
    process.stdout.write(topLevelUsage());
    return;
  }
  if (first === '--version') {
    print(`${NAME} ${packageVersion()}`);
    return;
  }
  if (first === undefined) throw new UsageError(`missing sub-command: give one of ${Object.keys(SUBCOMMANDS).join(', ')}. Run '${NAME} --help'.`);
  if (first.startsWith('-')) {
    throw new UsageError(`unknown flag '${first}': ${NAME} takes a sub-command first (${Object.keys(SUBCOMMANDS).join(', ')}). Run '${NAME} --help'.`);
  }
  const sub = Object.hasOwn(SUBCOMMANDS, first) ? SUBCOMMANDS[first] : undefined;
  if (!sub) throw new UsageError(`unknown sub-command '${first}': give one of ${Object.keys(SUBCOMMANDS).join(', ')}. Run '${NAME} --help'.`);
  await sub.run(rest);
});
