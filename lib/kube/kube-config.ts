/**
 * The one place that builds a @kubernetes/client-node configuration: from a kubeconfig
 * file, from the pod's service account (in-cluster), or from parts (an API server address,
 * its CA and a token file, as an agent holds for the hub). Whatever is wrong with the
 * source is said in one sentence that names the file.
 */
import { existsSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { KubeConfig } from '@kubernetes/client-node';
import { UsageError } from '../common/errors.js';

/** Where a pod's service account is mounted (and KubeConfig.loadFromCluster reads it). */
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

export type KubeSource =
  /** A kubeconfig file (its current context). */
  | { kubeconfig: string; context?: string }
  /** The pod's service account; `root` prefixes its paths (tests mount one elsewhere). */
  | { inCluster: true; root?: string }
  /** An API server, the CA that signs its certificate, and a bearer token file (re-read as it rotates). */
  | { server: string; caFile: string; tokenFile: string };

/** A configuration, and where it came from (for messages). */
export interface KubeConnection {
  config: KubeConfig;
  /** The API server's URL. */
  server: string;
  /** The namespace of the context or of the pod, if any. */
  namespace?: string;
  describe: string;
}

/** Whether this process runs in a pod with a service account (KUBERNETES_SERVICE_HOST and a token). */
export function runningInCluster(root = ''): boolean {
  return Boolean(process.env.KUBERNETES_SERVICE_HOST) && existsSync(`${root}${SERVICE_ACCOUNT_DIR}/token`);
}

export function loadKube(source: KubeSource): KubeConnection {
  const config = new KubeConfig();
  let describe: string;
  if ('kubeconfig' in source) {
    describe = `kubeconfig ${source.kubeconfig}`;
    let text: string;
    try {
      text = readFileSync(source.kubeconfig, 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read the kubeconfig ${source.kubeconfig}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; give an existing file`);
    }
    try {
      config.loadFromString(text);
    } catch (err) {
      throw new UsageError(`the kubeconfig ${source.kubeconfig} does not parse: ${firstLine(err)}; give a kubeconfig as kubectl reads it`);
    }
    if (source.context) {
      if (!config.getContextObject(source.context)) throw new UsageError(`the kubeconfig ${source.kubeconfig} has no context "${source.context}": it has ${config.getContexts().map((c) => c.name).join(', ') || 'none'}`);
      config.setCurrentContext(source.context);
    }
    if (!config.getCurrentContext()) throw new UsageError(`the kubeconfig ${source.kubeconfig} names no current context; set current-context, or give one`);
  } else if ('inCluster' in source) {
    const root = source.root ?? '';
    describe = `the pod's service account (${root}${SERVICE_ACCOUNT_DIR})`;
    if (!runningInCluster(root)) {
      throw new UsageError('not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset or no service account token is mounted): give --kubeconfig=FILE');
    }
    config.loadFromCluster(root);
  } else {
    describe = `API server ${source.server}`;
    for (const [what, path] of [['CA bundle', source.caFile], ['token', source.tokenFile]] as const) {
      if (!existsSync(path)) throw new UsageError(`the ${what} file ${path} for ${source.server} does not exist; give the file the bootstrap credential was written to`);
    }
    config.loadFromClusterAndUser(
      { name: 'api-server', server: source.server, caFile: source.caFile, skipTLSVerify: false },
      // Not config.tokenFile: client-node's own file authenticator would take that.
      { name: 'token', authProvider: { name: TOKEN_FILE_PROVIDER, config: { path: source.tokenFile } } },
    );
    config.addAuthenticator(new TokenFileAuthenticator());
  }
  const cluster = config.getCurrentCluster();
  if (!cluster?.server) throw new UsageError(`${describe} names no API server: its current context's cluster has no server`);
  if (!/^https:\/\//.test(cluster.server)) throw new UsageError(`${describe} names API server ${cluster.server}, which is not https: the tunnel talks to Kubernetes over TLS only`);
  const namespace = config.getContextObject(config.getCurrentContext())?.namespace;
  return { config, server: cluster.server, namespace: namespace || undefined, describe };
}

function firstLine(err: unknown): string {
  return ((err as Error).message ?? String(err)).split('\n')[0];
}

const TOKEN_FILE_PROVIDER = 'tunnel-token-file';
/** client-go reads a token file again every minute; so does client-node's own file authenticator. */
const TOKEN_REREAD_MS = 60_000;

/**
 * A bearer token read from a file, re-read every minute (tokens rotate) and trimmed of
 * surrounding whitespace, as client-go does: a token file written by `echo` ends in a
 * newline, which client-node's own file authenticator would send in the header.
 */
class TokenFileAuthenticator {
  private token?: string;
  private readAt = 0;

  isAuthProvider(user: { authProvider?: { name?: string } }): boolean {
    return user.authProvider?.name === TOKEN_FILE_PROVIDER;
  }

  async applyAuthentication(user: { authProvider?: { config?: { path?: string } } }, options: { headers?: Record<string, unknown> }): Promise<void> {
    const path = user.authProvider?.config?.path;
    if (!path) return;
    if (this.token === undefined || Date.now() - this.readAt > TOKEN_REREAD_MS) {
      this.token = (await readFile(path, 'utf8')).trim();
      this.readAt = Date.now();
    }
    options.headers = { ...options.headers, Authorization: `Bearer ${this.token}` };
  }
}
