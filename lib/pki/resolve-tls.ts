/**
 * Where a binary's TLS material comes from: the certificate flags when given (all of them,
 * or none), otherwise the local PKI in the state directory, created on first use.
 */
import { UsageError } from '../common/errors.js';
import { ensureLocalPki } from './local-pki.js';
import { FileTlsSource, localAgentTlsSource, localPkiTlsSource, type TlsSource } from './tls-source.js';

export interface TlsFlags {
  /** Flag name -> value, e.g. { 'ca-cert': '/etc/tunnel/ca.crt', ... }. */
  ca: [string, string | undefined];
  cert: [string, string | undefined];
  key: [string, string | undefined];
}

export interface ResolveTlsOptions {
  role: 'server' | 'agent' | 'client';
  /** Names the listener or channel in error messages. */
  purpose: string;
  stateDir: string;
  dnsNames?: string[];
  ips?: string[];
  /** For the agent role: the cluster its local certificate must name. */
  agentCluster?: string;
  /** Polls the files for rotation; 0 turns it off. */
  watchIntervalMs?: number;
}

export async function resolveTls(flags: TlsFlags, options: ResolveTlsOptions): Promise<TlsSource> {
  const given = [flags.ca, flags.cert, flags.key].filter(([, value]) => value);
  if (given.length === 0) {
    if (options.role === 'agent') {
      if (!options.agentCluster) throw new UsageError(`the local PKI issues agent certificates per cluster: give --cluster-name, or the certificate flags --${flags.ca[0]}, --${flags.cert[0]}, --${flags.key[0]}`);
      return localAgentTlsSource(options.stateDir, options.agentCluster, { watchIntervalMs: options.watchIntervalMs });
    }
    const paths = await ensureLocalPki({ stateDir: options.stateDir, dnsNames: options.dnsNames, ips: options.ips });
    return localPkiTlsSource(paths, options.role, { watchIntervalMs: options.watchIntervalMs });
  }
  if (given.length < 3) {
    const missing = [flags.ca, flags.cert, flags.key].filter(([, value]) => !value).map(([name]) => `--${name}`);
    throw new UsageError(`${missing.join(' and ')} must be given too: give all of --${flags.ca[0]}, --${flags.cert[0]}, --${flags.key[0]}, or none to use the local PKI in ${options.stateDir}`);
  }
  return FileTlsSource.load(
    { ca: flags.ca[1]!, cert: flags.cert[1]!, key: flags.key[1]!, role: options.purpose },
    { watchIntervalMs: options.watchIntervalMs },
  );
}
