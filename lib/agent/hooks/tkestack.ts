/**
 * The `tkestack` hook provider: once the agent is connected, it reports the managed cluster's
 * admin credential (its API server's CA and the bearer token of the managed client) to the
 * hub, in the cluster's ClusterCredential (platform.tkestack.io/v1, cluster-scoped), so that
 * tkestack's platform reaches the cluster with it.
 *
 * - The credential is found by fieldSelector `clusterName=<cluster>`; a hub that answers 400
 *   "field label not supported" (tkestack in CRD mode) is asked by labelSelector
 *   `tkestack.io/cluster-name=<cluster>` instead, and from then on.
 * - A credential found is updated (a PUT with the resourceVersion read) only when the token
 *   or the CA changed; a conflict reads it again. None found: one is created, with
 *   generateName `cc-`, `clusterName`, the label, and `tenantID` when given.
 * - The token goes into the request body and nowhere else: not into logs, not into errors.
 *
 * The hub user needs `list`, `create` and `update` on `clustercredentials` in API group
 * `platform.tkestack.io`.
 */
import { readFile } from 'node:fs/promises';
import { CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { defer, lastValueFrom, retry, throwError, timer } from 'rxjs';
import { UsageError } from '../../common/errors.js';
import { KubeApiError, kubeApiError, statusCodeOf, type ApiAction } from '../../kube/api-errors.js';
import type { Logger } from '../../observe/log.js';
import { requireHub, requireManaged, type AgentHook, type HookFailurePolicy } from './hooks.js';

export const TKESTACK_PROVIDER = 'tkestack';
export const CLUSTER_CREDENTIALS = { group: 'platform.tkestack.io', version: 'v1', plural: 'clustercredentials', kind: 'ClusterCredential' } as const;
/** The label tkestack sets on a ClusterCredential, and selects by in CRD mode. */
export const CLUSTER_NAME_LABEL = 'tkestack.io/cluster-name';

/** The `--hook-option` keys the provider takes. */
export const TKESTACK_OPTIONS = {
  'cluster-name': 'the tkestack cluster name, when it is not the agent\'s --cluster-name',
  'tenant-id': 'the tenantID of a ClusterCredential the hook creates',
} as const;

/** How often a credential that keeps changing under the hook is read again, in one attempt. */
const CONFLICT_RETRIES = 5;

export interface TkestackHookOptions {
  /** Default: the agent's cluster name. */
  clusterName?: string;
  tenantID?: string;
  /** Default `retry`. */
  failurePolicy?: HookFailurePolicy;
  timeoutMs?: number;
}

/** What the hook did. */
export interface CredentialReport {
  /** The ClusterCredential's name. */
  name: string;
  created: boolean;
  tokenChanged: boolean;
  caChanged: boolean;
}

/** The provider's hooks for `--hook-option` values; an unknown key is a usage error. */
export function tkestackHooks(options: ReadonlyMap<string, string>): AgentHook[] {
  const unknown = [...options.keys()].filter((key) => !(key in TKESTACK_OPTIONS));
  if (unknown.length > 0) {
    throw new UsageError(`--hook-provider=${TKESTACK_PROVIDER} takes no option ${unknown.join(', ')}: it takes ${Object.entries(TKESTACK_OPTIONS).map(([k, v]) => `${k} (${v})`).join(', ')}`);
  }
  const clusterName = options.get('cluster-name');
  if (clusterName !== undefined && clusterName.trim() === '') throw new UsageError('--hook-option cluster-name= is empty: give the cluster\'s name, or leave the option out');
  return [tkestackHook({ clusterName: clusterName?.trim(), tenantID: options.get('tenant-id') || undefined })];
}

/** The post-start hook that keeps the cluster's ClusterCredential at the hub current. */
export function tkestackHook(options: TkestackHookOptions = {}): AgentHook {
  const lookup: LookupState = {};
  return {
    name: TKESTACK_PROVIDER,
    failurePolicy: options.failurePolicy ?? 'retry',
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    async postStart(ctx) {
      const clusterName = options.clusterName ?? ctx.config.clusterName;
      if (!clusterName) {
        throw new Error('the ClusterCredential is named by the cluster, but the agent has no cluster name: start the agent with --cluster-name, or give --hook-option cluster-name=NAME');
      }
      await reportClusterCredential({
        hub: requireHub(ctx, TKESTACK_PROVIDER),
        managed: requireManaged(ctx, TKESTACK_PROVIDER),
        clusterName,
        tenantID: options.tenantID,
        log: ctx.log,
        signal: ctx.signal,
        lookup,
      });
    },
  };
}

/** Whether the hub selects ClusterCredentials by field or by label; found out once. */
export interface LookupState {
  by?: 'field' | 'label';
}

export interface ReportParams {
  hub: KubeConfig;
  managed: KubeConfig;
  clusterName: string;
  tenantID?: string;
  log: Logger;
  signal?: AbortSignal;
  /** Carries what was learned about the hub between calls. */
  lookup?: LookupState;
}

/**
 * Creates or updates the ClusterCredential of `clusterName` at the hub with the managed
 * cluster's CA and current token.
 * @throws Error in an operator's words, which never holds the token.
 */
export async function reportClusterCredential(params: ReportParams): Promise<CredentialReport> {
  const credential = await managedCredential(params.managed);
  try {
    return await lastValueFrom(defer(() => syncOnce(params, credential)).pipe(
      retry({
        count: CONFLICT_RETRIES,
        delay: (err: unknown) => {
          if (!(err instanceof KubeApiError && err.code === 409)) return throwError(() => err);
          params.log.info('the ClusterCredential changed meanwhile; reading it again', { cluster: params.clusterName });
          return timer(0);
        },
      }),
    ));
  } catch (err) {
    throw redacted(err, credential.token);
  }
}

interface Credential {
  /** base64 of the PEM bundle. */
  caCert: string;
  token: string;
}

type ClusterCredential = Record<string, unknown> & {
  metadata?: { name?: string; generateName?: string; resourceVersion?: string; creationTimestamp?: string; labels?: Record<string, string> };
  clusterName?: string;
  caCert?: string;
  token?: string;
};

async function syncOnce(params: ReportParams, credential: Credential): Promise<CredentialReport> {
  const { hub, clusterName, log } = params;
  const server = hub.getCurrentCluster()?.server ?? 'the hub';
  const api = hub.makeApiClient(CustomObjectsApi);
  params.signal?.throwIfAborted();
  const found = await findCredentials(api, params, server);
  params.signal?.throwIfAborted();
  if (found.length === 0) {
    const body: ClusterCredential = {
      apiVersion: `${CLUSTER_CREDENTIALS.group}/${CLUSTER_CREDENTIALS.version}`,
      kind: CLUSTER_CREDENTIALS.kind,
      metadata: { generateName: 'cc-', labels: { [CLUSTER_NAME_LABEL]: clusterName } },
      clusterName,
      ...(params.tenantID ? { tenantID: params.tenantID } : {}),
      caCert: credential.caCert,
      token: credential.token,
    };
    const created = await call({ verb: 'create', resource: CLUSTER_CREDENTIALS.plural, group: CLUSTER_CREDENTIALS.group }, server,
      () => api.createClusterCustomObject({ ...groupVersionPlural(), body }) as Promise<ClusterCredential>);
    const name = created.metadata?.name ?? '';
    log.info('created the cluster credential', { credential: name, cluster: clusterName, tenantID: params.tenantID });
    return { name, created: true, tokenChanged: true, caChanged: true };
  }
  const [current, ...others] = found;
  const name = current.metadata?.name ?? '';
  if (others.length > 0) {
    log.warn('several ClusterCredentials name the cluster; keeping the oldest current', { cluster: clusterName, credential: name, others: others.map((c) => c.metadata?.name).join(',') });
  }
  const tokenChanged = current.token !== credential.token;
  const caChanged = !sameBase64(current.caCert, credential.caCert);
  if (!tokenChanged && !caChanged) {
    log.info('the cluster credential is up to date', { credential: name, cluster: clusterName });
    return { name, created: false, tokenChanged, caChanged };
  }
  const body: ClusterCredential = { ...current, token: credential.token, caCert: credential.caCert };
  await call({ verb: 'update', resource: CLUSTER_CREDENTIALS.plural, group: CLUSTER_CREDENTIALS.group, name }, server,
    () => api.replaceClusterCustomObject({ ...groupVersionPlural(), name, body }) as Promise<unknown>);
  log.info('updated the cluster credential', { credential: name, cluster: clusterName, tokenChanged, caChanged });
  return { name, created: false, tokenChanged, caChanged };
}

/** The cluster's credentials, oldest first. */
async function findCredentials(api: CustomObjectsApi, params: ReportParams, server: string): Promise<ClusterCredential[]> {
  const lookup = params.lookup ?? {};
  const { clusterName } = params;
  const action: ApiAction = { verb: 'list', resource: CLUSTER_CREDENTIALS.plural, group: CLUSTER_CREDENTIALS.group };
  let items: ClusterCredential[] | undefined;
  if (lookup.by !== 'label') {
    try {
      items = listItems(await api.listClusterCustomObject({ ...groupVersionPlural(), fieldSelector: `clusterName=${clusterName}` }));
      lookup.by = 'field';
    } catch (err) {
      if (!fieldLabelUnsupported(err)) throw kubeApiError(err, action, server);
      params.log.info('the hub selects ClusterCredentials by label only (tkestack in CRD mode); selecting by label', { label: `${CLUSTER_NAME_LABEL}=${clusterName}` });
      lookup.by = 'label';
    }
  }
  if (!items) {
    items = await call(action, server, async () => listItems(await api.listClusterCustomObject({ ...groupVersionPlural(), labelSelector: `${CLUSTER_NAME_LABEL}=${clusterName}` })));
  }
  return items
    .filter((item) => item.clusterName === undefined || item.clusterName === clusterName)
    .sort((a, b) => (a.metadata?.creationTimestamp ?? '').localeCompare(b.metadata?.creationTimestamp ?? '') || (a.metadata?.name ?? '').localeCompare(b.metadata?.name ?? ''));
}

function listItems(list: unknown): ClusterCredential[] {
  const items = (list as { items?: unknown })?.items;
  return Array.isArray(items) ? items as ClusterCredential[] : [];
}

function fieldLabelUnsupported(err: unknown): boolean {
  if (statusCodeOf(err) !== 400) return false;
  const body = (err as { body?: unknown }).body;
  const text = typeof body === 'string' ? body : JSON.stringify(body ?? '');
  return /field label not supported|is not a known field selector/.test(text);
}

async function call<T>(action: ApiAction, server: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw kubeApiError(err, action, server);
  }
}

function groupVersionPlural() {
  return { group: CLUSTER_CREDENTIALS.group, version: CLUSTER_CREDENTIALS.version, plural: CLUSTER_CREDENTIALS.plural };
}

/** The managed cluster's CA (base64 of the PEM) and its user's bearer token, as they are now. */
async function managedCredential(managed: KubeConfig): Promise<Credential> {
  const cluster = managed.getCurrentCluster();
  const user = managed.getCurrentUser();
  if (!cluster || !user) throw new Error('the managed cluster\'s kubeconfig has no current context with a cluster and a user: give --managed-kubeconfig with a current context, or run the agent in a pod');
  let pem: Buffer;
  if (cluster.caData) {
    pem = Buffer.from(cluster.caData, 'base64');
  } else if (cluster.caFile) {
    try {
      pem = await readFile(cluster.caFile);
    } catch (err) {
      throw new Error(`cannot read the managed cluster's CA file ${cluster.caFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
    }
  } else {
    throw new Error(`the managed cluster's kubeconfig (cluster "${cluster.name}") has no CA (certificate-authority or certificate-authority-data): the hub could not verify the cluster's API server; give a kubeconfig with its CA`);
  }
  if (!pem.toString('latin1').includes('-----BEGIN CERTIFICATE-----')) {
    throw new Error(`the managed cluster's CA (cluster "${cluster.name}"${cluster.caFile && !cluster.caData ? `, file ${cluster.caFile}` : ''}) holds no PEM certificate`);
  }
  return { caCert: pem.toString('base64'), token: await bearerToken(managed, user) };
}

/** The bearer token the managed client sends now: a token file is read again, so a rotated token is the one reported. */
async function bearerToken(managed: KubeConfig, user: NonNullable<ReturnType<KubeConfig['getCurrentUser']>>): Promise<string> {
  const provider = user.authProvider as { name?: string; config?: Record<string, unknown> } | undefined;
  // client-node's in-cluster tokenFile provider, and lib/kube/kube-config.ts's token-file provider.
  const file = provider?.config?.tokenFile ?? (provider?.name === 'tunnel-token-file' ? provider.config?.path : undefined);
  if (typeof file === 'string' && file !== '') {
    let token: string;
    try {
      token = (await readFile(file, 'utf8')).trim();
    } catch (err) {
      throw new Error(`cannot read the managed cluster's token file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
    }
    if (token === '') throw new Error(`the managed cluster's token file ${file} is empty`);
    return token;
  }
  if (user.token) return user.token.trim();
  const options: { headers?: Record<string, unknown> } = { headers: {} };
  await managed.applyToHTTPSOptions(options);
  const authorization = options.headers?.Authorization ?? options.headers?.authorization;
  const match = typeof authorization === 'string' ? /^Bearer\s+(\S+)/i.exec(authorization) : null;
  if (match) return match[1];
  throw new Error(`the managed cluster's user "${user.name}" has no bearer token (a token, a token file, or an auth provider that gives one), which is what a ClusterCredential carries: give --managed-kubeconfig with a token user, or run the agent in a pod with a service account`);
}

function sameBase64(a: string | undefined, b: string): boolean {
  return a !== undefined && Buffer.from(a, 'base64').equals(Buffer.from(b, 'base64'));
}

/** The error, or when its message holds the token, one with the token taken out (and without the cause that held it). */
function redacted(err: unknown, token: string): Error {
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof Error && !message.includes(token)) return err;
  return new Error(message.split(token).join('[token]'));
}
