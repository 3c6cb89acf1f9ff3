#!/usr/bin/env node
/**
 * tunnel-client: sends test requests through the tunnel, with the flags of the reference's
 * test client. Each request dials its own tunneled connection through the tunnel server
 * (HTTP-CONNECT or gRPC), sends GET over it and prints the body after `HTML Response:`.
 * With --kubeconfig it lists a managed cluster's pods through the tunnel instead; with
 * --listen it runs a local CONNECT proxy into the tunnel for kubectl and curl.
 * The logic lives in lib/client; this file maps flags onto it and prints the results.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ApiException, CoreV1Api, type V1Pod } from '@kubernetes/client-node';
import { onShutdownSignal, parseCount, parseDuration, parseFlags, parsePort, runMain, type FlagSpecs, type FlagValues } from '../lib/cli/flags.js';
import { UsageError } from '../lib/common/errors.js';
import {
  DialError, TUNNEL_DIAL_FAILED, createTunnelDialer, getThroughTunnel, joinHostPort, loadClientTls, proxiedKubeconfig, splitHostPort,
  startLocalProxy, tunnelKubeConfig, tunnelProxyLabel, type TunnelDialerOptions,
} from '../lib/client/index.js';
import { loadKube, type KubeConnection } from '../lib/kube/kube-config.js';
import { logger, processLine } from '../lib/observe/log.js';
import { applyLogFormat, logFormatFlag } from '../lib/cli/common-flags.js';
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
  kubeconfig: { type: 'string', metavar: 'FILE', help: 'the managed cluster\'s kubeconfig: list its pods through the tunnel (like kubectl get pods), or with --write-kubeconfig the kubeconfig to rewrite' },
  context: { type: 'string', metavar: 'NAME', help: 'the kubeconfig context to use (default: its current-context)' },
  'cluster-name': { type: 'string', metavar: 'NAME', help: 'the managed cluster\'s name at the tunnel (its agent\'s --cluster-name); default: the name of the context\'s cluster. With --listen, every CONNECT goes to this cluster' },
  namespace: { type: 'string', metavar: 'NS', help: 'with --kubeconfig: the namespace whose pods to list (default: the context\'s namespace, else "default")' },
  'all-namespaces': { type: 'boolean', help: 'with --kubeconfig: list the pods of all namespaces' },
  listen: { type: 'string', metavar: 'HOST:PORT', help: 'run a local HTTP CONNECT proxy into the tunnel on HOST:PORT (port 0 picks one) until SIGINT or SIGTERM; for kubectl\'s proxy-url and curl --proxy http://...' },
  'allow-non-loopback': { type: 'boolean', help: 'let --listen take an address other than loopback: the local proxy has no authentication, anyone who reaches it can dial every cluster' },
  ...logFormatFlag(),
  'write-kubeconfig': { type: 'string', metavar: 'OUT', help: 'with --listen and --kubeconfig: write a copy of the kubeconfig that goes through the local proxy (proxy-url, server https://CLUSTER:PORT, tls-server-name)' },
} as const satisfies FlagSpecs;

const INFO = {
  name: NAME,
  summary: 'Send GET requests through the tunnel and print each response body after "HTML Response:";\n'
    + 'or list a managed cluster\'s pods through it (--kubeconfig); or run a local CONNECT proxy into it for kubectl (--listen).',
  epilog: [
    'Over TCP the tunnel server is reached with mTLS: give --ca-cert, --client-cert and --client-key,',
    'or none of them to use the client certificate of the local PKI. With --proxy-uds there is no TLS.',
    'With --request-proto=https the target\'s certificate is verified only when --request-ca-cert is given.',
    '',
    'With --kubeconfig the pods of the managed cluster are listed through the tunnel: the API server\'s',
    'address is dialed as CLUSTER:PORT (CLUSTER from --cluster-name, else the context\'s cluster name),',
    'and TLS runs end to end with the kubeconfig\'s CA, credentials and server name.',
    'With --listen a local CONNECT proxy (no authentication; loopback only unless --allow-non-loopback)',
    'dials each CONNECT host:port through the tunnel (to --cluster-name, if given, with the port asked for);',
    '--write-kubeconfig writes a kubeconfig for it, each cluster to --cluster-name or to the cluster of its own name.',
    '',
    'Examples:',
    `  ${NAME} --request-host=c1 --request-port=443 --request-proto=https --request-path=healthz`,
    `  ${NAME} --mode=grpc --proxy-uds=/run/tunnel/grpc.sock --request-host=c1`,
    `  ${NAME} --kubeconfig=cluster-a.kubeconfig --cluster-name=cluster-a --all-namespaces`,
    `  ${NAME} --listen=127.0.0.1:8001 --kubeconfig=cluster-a.kubeconfig --cluster-name=cluster-a --write-kubeconfig=via-tunnel.kubeconfig`,
    '  kubectl --kubeconfig=via-tunnel.kubeconfig get pods -A',
  ].join('\n'),
};

runMain(NAME, async () => {
  const flags = parseFlags(INFO, FLAGS, process.argv.slice(2));
  applyLogFormat(flags['log-format']);
  const mode = oneOf('mode', flags.mode, MODES);
  const proto = oneOf('request-proto', flags['request-proto'], PROTOS);
  const requests = parseCount('test-requests', flags['test-requests'], 1);
  const delayMs = parseDuration('test-delay', flags['test-delay']);
  const timeoutMs = parseDuration('timeout', flags.timeout);
  if (timeoutMs <= 0) throw new UsageError(`--timeout=${flags.timeout} must be longer than 0`);
  checkFlagCombinations(flags);
  const url = new URL(`${proto}://${joinHostPort(flags['request-host'], parsePort('request-port', flags['request-port']))}/${flags['request-path'].replace(/^\/+/, '')}`);
  const listen = flags.listen === undefined ? undefined : parseListen(flags.listen);
  const kube = flags.kubeconfig === undefined ? undefined : loadKube({ kubeconfig: flags.kubeconfig, context: flags.context });

  const dialer = await dialerOptions(flags, mode, timeoutMs);
  if (listen) {
    await runLocalProxy(flags, listen, dialer, kube);
    return;
  }
  if (kube) {
    await listPods(flags, kube, dialer, timeoutMs);
    return;
  }
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
    // The body's bytes as they came, as the reference client prints them (a binary body too).
    process.stdout.write('HTML Response:\n');
    process.stdout.write(response.body);
    process.stdout.write('\n');
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

/** Flags that only mean something together with others. */
function checkFlagCombinations(flags: Flags): void {
  if (flags['write-kubeconfig'] !== undefined && (flags.listen === undefined || flags.kubeconfig === undefined)) {
    throw new UsageError('--write-kubeconfig needs --listen (the proxy it points at) and --kubeconfig (the kubeconfig to rewrite)');
  }
  if (flags['allow-non-loopback'] && flags.listen === undefined) throw new UsageError('--allow-non-loopback applies to --listen only');
  if (flags['cluster-name'] !== undefined && flags.kubeconfig === undefined && flags.listen === undefined) {
    throw new UsageError('--cluster-name applies to --kubeconfig and --listen; for a single request give the cluster as --request-host');
  }
  if (flags.kubeconfig === undefined) {
    for (const flag of ['namespace', 'context'] as const) {
      if (flags[flag] !== undefined) throw new UsageError(`--${flag} needs --kubeconfig`);
    }
    if (flags['all-namespaces']) throw new UsageError('--all-namespaces needs --kubeconfig');
  }
  if (flags.namespace !== undefined && flags['all-namespaces']) throw new UsageError('give --namespace or --all-namespaces, not both');
  if (flags.listen !== undefined && (flags.namespace !== undefined || flags['all-namespaces'])) {
    throw new UsageError('--namespace and --all-namespaces list pods, which --listen does not; run without --listen to list them');
  }
}

/** `HOST:PORT`, `[V6]:PORT`, or a bare port on 127.0.0.1. */
function parseListen(value: string): { host: string; port: number } {
  if (/^\d+$/.test(value)) return { host: '127.0.0.1', port: parsePort('listen', value) };
  const address = splitHostPort(value);
  if (!address) throw new UsageError(`--listen=${value} is not HOST:PORT: give e.g. 127.0.0.1:8001 (port 0 picks a free one)`);
  return address;
}

async function runLocalProxy(flags: Flags, listen: { host: string; port: number }, dialer: TunnelDialerOptions, kube: KubeConnection | undefined): Promise<void> {
  const cluster = flags['cluster-name'];
  const proxy = await startLocalProxy({ listen, dialer, cluster, allowNonLoopback: flags['allow-non-loopback'], log: logger('tunnel-client') });
  const out = flags['write-kubeconfig'];
  if (out !== undefined && kube && flags.kubeconfig !== undefined) {
    try {
      const text = proxiedKubeconfig(await readFile(flags.kubeconfig, 'utf8'), { proxyUrl: proxy.url, cluster, baseDir: dirname(flags.kubeconfig) });
      await writeFile(out, text, { mode: 0o600 });
    } catch (err) {
      await proxy.close();
      const reason = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw new Error(`cannot write the kubeconfig ${out} for the local proxy: ${reason}`, { cause: err });
    }
    const wrote = `wrote ${out}: kubectl --kubeconfig=${out} get pods goes through this proxy and the tunnel`;
    process.stderr.write(processLine(NAME, 'info', wrote, wrote));
  }
  const route = cluster === undefined ? 'each CONNECT host:port goes to the cluster of that host' : `every CONNECT goes to cluster ${cluster}`;
  process.stdout.write(`local CONNECT proxy listening on ${proxy.address} (proxy-url ${proxy.url}); ${route} through ${tunnelProxyLabel(dialer)}\n`);
  onShutdownSignal(() => proxy.close());
  await new Promise<never>(() => undefined);
}

async function listPods(flags: Flags, kube: KubeConnection, dialer: TunnelDialerOptions, timeoutMs: number): Promise<void> {
  let config;
  try {
    config = tunnelKubeConfig(kube.config, { cluster: flags['cluster-name'], dialer });
  } catch (err) {
    throw new UsageError(`${(err as Error).message} (${kube.describe})`);
  }
  const cluster = config.tunnelCluster();
  const namespace = flags['all-namespaces'] ? undefined : flags.namespace ?? kube.namespace ?? 'default';
  const api = config.makeApiClient(CoreV1Api);
  const what = `pods ${namespace === undefined ? 'in all namespaces' : `in namespace "${namespace}"`} of cluster "${cluster}" (API server ${kube.server} of ${kube.describe})`;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
  });
  let pods: V1Pod[];
  try {
    const list = await Promise.race([namespace === undefined ? api.listPodForAllNamespaces() : api.listNamespacedPod({ namespace }), timeout]);
    pods = list.items;
  } catch (err) {
    throw new Error(`cannot list ${what}: ${listFailure(err, kube.server)}`, { cause: err });
  } finally {
    clearTimeout(timer);
  }
  if (pods.length === 0) {
    process.stderr.write(namespace === undefined ? 'No resources found\n' : `No resources found in ${namespace} namespace.\n`);
    return;
  }
  process.stdout.write(table(['NAMESPACE', 'NAME', 'STATUS'], pods.map((pod) => [pod.metadata?.namespace ?? '', pod.metadata?.name ?? '', podStatus(pod)])));
}

/** Why a list failed: the tunnel's refusal, the API server's status and message, or its certificate. */
function listFailure(err: unknown, server: string): string {
  if (err instanceof ApiException) {
    const status = apiStatus(err.body);
    const reason = status.reason ? ` ${status.reason}` : '';
    const message = status.message ? `: ${status.message}` : '';
    return `the API server answered ${err.code}${reason}${message}`;
  }
  const { code = '', message } = err as NodeJS.ErrnoException;
  // node-fetch says "request to URL failed, reason: ..." around the words of the failure.
  const reason = message.replace(/^request to \S+ failed, reason: /, '');
  if (code === TUNNEL_DIAL_FAILED) return reason;
  if (/CERT|SIGNATURE|VERIFY|^ERR_TLS_/.test(code)) {
    return `the certificate of the API server did not verify (${code}): ${reason}; check the kubeconfig's certificate-authority and tls-server-name`;
  }
  if (code === '') return reason;
  return `the API server ${server}, reached through the tunnel, failed: ${reason} (${code})`;
}

function apiStatus(body: unknown): { reason?: string; message?: string } {
  if (typeof body === 'object' && body !== null) return body;
  if (typeof body !== 'string' || body === '') return {};
  try {
    return JSON.parse(body) as { reason?: string; message?: string };
  } catch {
    return { message: body.slice(0, 200) };
  }
}

/** STATUS as kubectl get pods shows it in most cases: Terminating, the pod's reason, a waiting or terminated container's reason, or the phase. */
function podStatus(pod: V1Pod): string {
  if (pod.metadata?.deletionTimestamp) return 'Terminating';
  if (pod.status?.reason) return pod.status.reason;
  for (const container of pod.status?.containerStatuses ?? []) {
    const reason = container.state?.waiting?.reason ?? container.state?.terminated?.reason;
    if (reason) return reason;
  }
  return pod.status?.phase ?? 'Unknown';
}

/** Columns padded as kubectl's tabwriter pads them: three spaces after the widest cell. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i] + 3))).join('');
  return [header, ...rows].map(line).join('\n') + '\n';
}
