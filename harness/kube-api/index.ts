/**
 * An in-process Kubernetes API server double: an HTTPS server on 127.0.0.1 that
 * @kubernetes/client-node and kubectl use as if it were kube-apiserver, for the tests, the
 * demo and the bench. It serves discovery, core v1 namespaces, secrets, configmaps,
 * serviceaccounts (with TokenRequest), services, endpoints, pods and nodes,
 * certificates.k8s.io/v1 CSRs (with /approval and /status and their admission plugins),
 * authentication.k8s.io/v1 TokenReview, coordination.k8s.io/v1 leases, and custom resources
 * added with registerResource; with RBAC-style grants, optimistic concurrency, the three
 * patch types, label and field selectors, watches with resume and 410, server-side Tables for
 * kubectl, and optionally the controller-manager's signer for the kubernetes.io signers.
 *
 * Not reproduced (what the real API server does and this double does not):
 * - Wire formats: answers are JSON only (never protobuf or YAML); protobuf request bodies are
 *   read only for the kinds kubectl writes with typed clients (protobuf-schema.ts), YAML
 *   bodies are 415. No server-side apply (application/apply-patch+yaml is 415), no
 *   managedFields, no dryRun (refused with 400 rather than ignored), and fieldValidation=Strict
 *   keeps unknown fields instead of refusing them.
 * - Schemas: built-in objects keep fields the real server would drop, and only the rules in
 *   each type's file are validated (ObjectMeta, CSRs, Secrets, ConfigMaps, Services, Pods,
 *   Endpoints, Leases, TokenRequest; most other field rules of core types are not).
 * - Discovery and OpenAPI: legacy discovery only (kubectl falls back from aggregated), and
 *   OpenAPI v3 only as far as kubectl needs to send fieldValidation: no schemas, so kubectl
 *   explain and client-side apply of an existing object do not work.
 * - Authentication: no anonymous requests (--anonymous-auth=false), no impersonation, no
 *   OIDC/webhook; static tokens and client certificates carry no uid or extra. RBAC objects
 *   do not exist (grant() stands in for Roles and bindings), no SubjectAccessReview or
 *   SelfSubjectAccessReview (kubectl auth can-i), and non-resource URL rules are fixed:
 *   discovery, /version, /openapi and health are open to authenticated users, nothing else.
 * - Controllers: only the ServiceAccount controller, the root CA publisher, the namespace
 *   finalizer and (optionally) the CSR signer run. No scheduler or kubelet (a pod bound to a
 *   node waits for its grace period forever), no endpoints controller, no garbage collector
 *   (ownerReferences and propagationPolicy are stored, not acted on), no CSR approver or
 *   cleaner, no token controller for service-account-token Secrets.
 * - Watches: no sendInitialEvents/WatchList, no initial-events-end bookmark, no legacy
 *   /watch/ paths; bookmarks come every second instead of about every minute.
 * - History: resumable watches, resourceVersionMatch=Exact and continue tokens reach back
 *   historyLimit changes per resource type, not etcd's five-minute compaction window.
 * - Services: one IPv4 ClusterIP range (10.96.0.0/12) and NodePorts without dual-stack or
 *   LoadBalancer behaviour; tokens bound to a Pod carry no node claims.
 */
import { ObjectStore } from './store.js';
import { Registry } from './registry.js';
import { Authorizer, type PolicyRule, type Subject } from './rbac.js';
import { Authenticator } from './auth.js';
import { ServiceAccountTokens } from './service-account-tokens.js';
import { createDoublePki, clientCertificate } from './pki.js';
import { renderKubeconfig, type KubeconfigOptions, type KubeconfigUser } from './kubeconfig.js';
import { ApiHandler } from './api-handler.js';
import { ApiListener, type RequestRecord } from './server.js';
import { ClusterControllers } from './controllers.js';
import { CsrSigner } from './csr-signer.js';
import { certificateSigningRequests } from './csr-strategy.js';
import { configMaps, endpoints, namespaces, nodes, pods, secrets, serviceAccounts, services, ServiceAllocator } from './core-resources.js';
import { customResource, leases, type CustomResourceDefinition } from './other-resources.js';
import { typeKey, type ResourceType } from './resource-types.js';
import type { JsonObject } from './json.js';
import type { WatchStream } from './watch.js';
import type { UserInfo } from './user.js';

export type { UserInfo } from './user.js';
export type { PolicyRule } from './rbac.js';
export type { CustomResourceDefinition } from './other-resources.js';
export { API_AUDIENCES, SERVICE_ACCOUNT_ISSUER } from './service-account-tokens.js';
export { BOOKMARK_INTERVAL_MS } from './watch.js';
export { SERVER_VERSION } from './discovery.js';

const DEFAULT_HISTORY_LIMIT = 1000;
const DEFAULT_SIGNING_DURATION_SECONDS = 365 * 24 * 3600;

export interface KubeApiOptions {
  /** How many watch events are kept for resuming, per resource type (as the watch cache keeps them); an older resourceVersion gets 410 Expired. Default 1000. */
  historyLimit?: number;
  /** Stand in for kube-controller-manager's csrsigning controller for kubernetes.io/kube-apiserver-client (and kube-apiserver-client-kubelet, kubelet-serving): sign approved CSRs with clientCa, or add Failed/SignerValidationFailure. Default false. */
  controllerManagerSigner?: boolean;
  /** Default lifetime of certificates the signer stand-in issues (kcm's --cluster-signing-duration), seconds. Default 1 year. */
  clusterSigningDurationSeconds?: number;
  /** Default 0 (any free port). */
  port?: number;
}

export interface KubeApiDouble {
  /** https://127.0.0.1:<port> */
  readonly url: string;
  /** CA of the serving certificate. */
  readonly caPem: string;
  /** CA whose client certificates are accepted (CN = user, O = groups); also the signer stand-in's CA. */
  readonly clientCaPem: string;
  /** A kubeconfig (YAML text) for a token or client-certificate user; options.server overrides the server URL, proxyUrl sets proxy-url, tlsServerName sets tls-server-name. */
  kubeconfig(user: KubeconfigUser, options?: KubeconfigOptions): string;
  addToken(token: string, user: UserInfo): void;
  issueClientCertificate(user: UserInfo): { cert: string; key: string };
  grant(subject: Subject, rules: PolicyRule[]): void;
  revokeAll(subject: Subject): void;
  /** Registers an extra resource type, e.g. platform.tkestack.io/v1 clustercredentials (cluster-scoped, no spec/status, selectable fields clusterName and tenantID, like tkestack's aggregated API). */
  registerResource(def: CustomResourceDefinition): void;
  /** Direct access to stored objects for test setup and assertions, without authentication (still assigns uid, resourceVersion, timestamps and emits watch events). */
  readonly objects: {
    get(group: string, resource: string, name: string, namespace?: string): Record<string, unknown> | undefined;
    list(group: string, resource: string, namespace?: string): Record<string, unknown>[];
    /** Create or replace: read and defaulted like a request body, but no strategy, validation or admission (a pre-approved CSR can be put). */
    put(group: string, resource: string, object: Record<string, unknown>): Record<string, unknown>;
    /** Removes at once: no finalizers, no graceful deletion, no namespace cleanup. */
    delete(group: string, resource: string, name: string, namespace?: string): void;
  };
  /** Every request: method, path (with query), user, status code. */
  readonly requests: ReadonlyArray<RequestRecord>;
  /** Forget watch history, so that any resourceVersion older than the current one gets 410. */
  compactHistory(): void;
  /** End every watch in progress cleanly, as the server does when a watch's timeout passes; clients resume from their last resourceVersion. */
  closeWatches(): void;
  /** Stop listening (existing watches end, new connections are refused) and listen again on the same port; state is kept. */
  stop(): Promise<void>;
  start(): Promise<void>;
  close(): Promise<void>;
}

/** The built-in types. */
function builtInTypes(authorizer: Authorizer, allocator: ServiceAllocator): ResourceType[] {
  return [
    namespaces(), secrets(), configMaps(), serviceAccounts(), services(allocator), endpoints(), pods(), nodes(),
    certificateSigningRequests(authorizer), leases(),
  ];
}

export async function startKubeApi(options: KubeApiOptions = {}): Promise<KubeApiDouble> {
  const now = () => new Date();
  const store = new ObjectStore(options.historyLimit ?? DEFAULT_HISTORY_LIMIT);
  const registry = new Registry(store);
  const authorizer = new Authorizer();
  const allocator = new ServiceAllocator();
  for (const type of builtInTypes(authorizer, allocator)) registry.register(type);
  store.subscribe(typeKey('', 'services'), (change) => {
    if (change.type === 'DELETED') allocator.release(change.object);
  });
  const lookup = (resource: string, namespace: string, name: string) => store.get(typeKey('', resource), namespace, name);
  const tokens = new ServiceAccountTokens(lookup);
  const authenticator = new Authenticator(tokens);
  const pki = createDoublePki();
  const watches = new Set<WatchStream>();
  const serverAddress = () => `127.0.0.1:${listener.port}`;
  const handler = new ApiHandler({ registry, authenticator, tokens, serverAddress, now, watches });
  const listener: ApiListener = new ApiListener({ certPem: pki.serving.certPem, keyPem: pki.serving.keyPem, clientCaPem: pki.clientCa.certPem }, authenticator, authorizer, handler, watches, now);
  const controllers = new ClusterControllers(registry, pki.servingCa.certPem, now);
  controllers.start();
  const csrType = registry.find('certificates.k8s.io', 'certificatesigningrequests') as ResourceType;
  const signer = options.controllerManagerSigner
    ? new CsrSigner(registry, csrType, pki.clientCa, options.clusterSigningDurationSeconds ?? DEFAULT_SIGNING_DURATION_SECONDS, now)
    : undefined;
  signer?.start();
  await listener.start(options.port ?? 0);
  controllers.publishApiServer(listener.port);

  const typeFor = (group: string, resource: string): ResourceType => {
    const type = registry.find(group, resource);
    if (!type) throw new Error(`no resource type ${resource}${group === '' ? '' : `.${group}`} is served; register it with registerResource first`);
    return type;
  };

  return {
    url: `https://127.0.0.1:${listener.port}`,
    caPem: pki.servingCa.certPem,
    clientCaPem: pki.clientCa.certPem,
    kubeconfig: (user, kubeconfigOptions) => renderKubeconfig(`https://127.0.0.1:${listener.port}`, pki.servingCa.certPem, user, kubeconfigOptions),
    addToken: (token, user) => authenticator.addToken(token, user),
    issueClientCertificate: (user) => clientCertificate(pki.clientCa, user.username, user.groups ?? []),
    grant: (subject, rules) => authorizer.grant(subject, rules),
    revokeAll: (subject) => authorizer.revokeAll(subject),
    registerResource: (def) => {
      const unsupported = (def.subresources ?? []).filter((sub) => sub !== 'status');
      if (unsupported.length > 0) throw new Error(`registerResource: only the status subresource is served, not ${unsupported.join(', ')}`);
      registry.register(customResource(def));
    },
    objects: {
      get: (group, resource, name, namespace) => {
        const type = typeFor(group, resource);
        return store.get(registry.key(type), type.namespaced ? namespace ?? '' : '', name);
      },
      list: (group, resource, namespace) => store.list(registry.key(typeFor(group, resource)), namespace),
      put: (group, resource, object: JsonObject) => registry.put(typeFor(group, resource), object, now()),
      delete: (group, resource, name, namespace) => {
        const type = typeFor(group, resource);
        store.delete(registry.key(type), type.namespaced ? namespace ?? '' : '', name);
      },
    },
    requests: listener.requests,
    compactHistory: () => store.compact(),
    closeWatches: () => {
      for (const watch of [...watches]) watch.end();
    },
    stop: () => listener.stop(),
    start: () => listener.start(),
    close: async () => {
      signer?.stop();
      controllers.stop();
      await listener.stop();
    },
  };
}

