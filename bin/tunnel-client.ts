#!/usr/bin/env node
/**
 * tunnel-client: sends test requests through the tunnel, with the flags of the reference's
 * test client. Each request dials its own tunneled connection through the tunnel server
 * (HTTP-CONNECT or gRPC), sends GET over it and prints the body after `HTML Response:`.
 * The logic lives in lib/client; this file maps flags onto it and prints the results.
 */
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseCount, parseDuration, parseFlags, parsePort, runMain, type FlagSpecs, type FlagValues } from '../lib/cli/flags.js';
import { UsageError } from '../lib/common/errors.js';
import {
  DialError, createTunnelDialer, getThroughTunnel, joinHostPort, loadClientTls, tunnelProxyLabel, type TunnelDialerOptions,
} from '../lib/client/index.js';
import { defaultStateDir } from '../lib/pki/local-pki.js';
import { DEFAULT_SERVER_PORT } from '../lib/wire/protocol.js';

const NAME = 'tunnel-client';
const MODES = ['http-connect', 'grpc'] as const;
const PROTOS = ['http', 'https'] as const;

const FLAGS = {
  mode: { type: 'string', default: 'http-connect', metavar: MODES.join('|'), help: 'how to reach the tunnel server: its HTTP-CONNECT frontend or its gRPC ProxyService' },
  'proxy-host': { type: 'string', default: '127.0.0.1', metavar: 'HOST', help: 'tunnel server host (TCP with mTLS)' },
  'proxy-port': { type: 'string', default: String(DEFAULT_SERVER_PORT), metavar: 'PORT', help: 'tunnel server port (TCP with mTLS)' },
  'proxy-uds': { type: 'string', metavar: 'PATH', help: 'tunnel server unix socket instead of TCP; no TLS (HTTP-CONNECT or gRPC after --mode)' },
  'request-proto': { type: 'string', default: 'http', metavar: PROTOS.join('|'), help: 'protocol spoken to the target through the tunnel' },
  'request-host': { type: 'string', default: 'localhost', metavar: 'HOST', help: 'target host; the tunnel server routes a cluster name to that cluster\'s agent' },
  'request-port': { type: 'string', default: '8000', metavar: 'PORT', help: 'target port' },
  'request-path': { type: 'string', default: 'success', metavar: 'PATH', help: 'path to GET on the target' },
  'request-ca-cert': { type: 'string', metavar: 'PATH', help: 'CA bundle to verify an https target with; without it the target\'s certificate is NOT verified' },
  'test-requests': { type: 'string', default: '1', metavar: 'N', help: 'number of requests, each through its own tunneled connection' },
  'test-delay': { type: 'string', default: '0', metavar: 'DURATION', help: 'pause between requests, e.g. 500ms or 2s' },
  'ca-cert': { type: 'string', metavar: 'PATH', help: 'CA bundle that signs the tunnel server\'s certificate' },
  'client-cert': { type: 'string', metavar: 'PATH', help: 'client certificate for mTLS to the tunnel server' },
  'client-key': { type: 'string', metavar: 'PATH', help: 'key of the client certificate' },
  'state-dir': { type: 'string', default: defaultStateDir(), metavar: 'DIR', help: 'without the three certificate flags, use (or create) the local PKI in DIR/pki ($TUNNEL_STATE_DIR)' },
  timeout: { type: 'string', default: '30s', metavar: 'DURATION', help: 'how long to wait for the tunnel to open, and for the target to answer' },
} as const satisfies FlagSpecs;

const INFO = {
  name: NAME,
  summary: 'Send GET requests through the tunnel and print each response body after "HTML Response:".',
  epilog: [
    'Over TCP the tunnel server is reached with mTLS: give --ca-cert, --client-cert and --client-key,',
    'or none of them to use the client certificate of the local PKI. With --proxy-uds there is no TLS.',
    'With --request-proto=https the target\'s certificate is verified only when --request-ca-cert is given.',
    '',
    'Examples:',
    `  ${NAME} --request-host=c1 --request-port=443 --request-proto=https --request-path=healthz`,
    `  ${NAME} --mode=grpc --proxy-uds=/run/tunnel/grpc.sock --request-host=c1`,
  ].join('\n'),
};

runMain(NAME, async () => {
  const flags = parseFlags(INFO, FLAGS, process.argv.slice(2));
  const mode = oneOf('mode', flags.mode, MODES);
  const proto = oneOf('request-proto', flags['request-proto'], PROTOS);
  const requests = parseCount('test-requests', flags['test-requests'], 1);
  const delayMs = parseDuration('test-delay', flags['test-delay']);
  const timeoutMs = parseDuration('timeout', flags.timeout);
  if (timeoutMs <= 0) throw new UsageError(`--timeout=${flags.timeout} must be longer than 0`);
  const url = new URL(`${proto}://${joinHostPort(flags['request-host'], parsePort('request-port', flags['request-port']))}/${flags['request-path'].replace(/^\/+/, '')}`);

  const dialer = await dialerOptions(flags, mode, timeoutMs);
  const label = tunnelProxyLabel(dialer);
  const dial = createTunnelDialer(dialer);
  const requestCa = flags['request-ca-cert'] === undefined ? undefined : await readCa(flags['request-ca-cert']);

  for (let i = 1; i <= requests; i++) {
    const response = await getThroughTunnel({ dial, url, ca: requestCa, rejectUnauthorized: requestCa !== undefined, timeoutMs })
      .catch((err: Error) => {
        const reason = err instanceof DialError && err.kind === 'refused' ? `proxy ${label} could not dial ${err.address}: ${err.message}` : err.message;
        throw new Error(`GET ${url.href} failed: ${reason}`, { cause: err });
      });
    // Like the reference client, any HTTP status is printed: the tunnel itself worked.
    process.stdout.write(`HTML Response:\n${response.body.toString('utf8')}\n`);
    if (i < requests && delayMs > 0) await sleep(delayMs);
  }
});

type Flags = FlagValues<typeof FLAGS>;

async function dialerOptions(flags: Flags, mode: (typeof MODES)[number], timeoutMs: number): Promise<TunnelDialerOptions> {
  const uds = flags['proxy-uds'];
  if (uds !== undefined) {
    return mode === 'grpc' ? { mode, proxy: { uds }, timeoutMs } : { mode, proxy: { path: uds }, timeoutMs };
  }
  const tcp = { host: flags['proxy-host'], port: parsePort('proxy-port', flags['proxy-port']) };
  const tls = await loadClientTls(certificateFiles(flags), flags['state-dir']);
  return { mode, proxy: { ...tcp, tls }, timeoutMs };
}

/** All three certificate flags, or none (then the local PKI is used). */
function certificateFiles(flags: Flags): { ca: string; cert: string; key: string } | undefined {
  const { 'ca-cert': ca, 'client-cert': cert, 'client-key': key } = flags;
  if (ca === undefined && cert === undefined && key === undefined) return undefined;
  if (ca === undefined || cert === undefined || key === undefined) {
    throw new UsageError('give all three of --ca-cert, --client-cert and --client-key, or none of them to use the local PKI in --state-dir');
  }
  return { ca, cert, key };
}

function oneOf<T extends string>(flag: string, value: string, choices: readonly T[]): T {
  if (!(choices as readonly string[]).includes(value)) throw new UsageError(`--${flag}=${value} is not valid: give one of ${choices.join(', ')}`);
  return value as T;
}

async function readCa(path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    throw new Error(`cannot read --request-ca-cert ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}. Give the PEM CA bundle that signs the target's certificate.`, { cause: err });
  }
}
