/**
 * A stand-in for kube-controller-manager's csrsigning controller: it watches CSRs for the
 * built-in signers kube-apiserver-client, kube-apiserver-client-kubelet and kubelet-serving,
 * and once one is Approved (and neither Failed nor already issued) checks the signer's rules
 * (usages, subject, SANs) and either signs it with the client CA through /status, or adds a
 * Failed condition with reason SignerValidationFailure, as kcm does. Lifetime is
 * min(--cluster-signing-duration, spec.expirationSeconds), at least 10 minutes, backdated 5
 * minutes (the end too, for certificates of 8 hours or more), and never past the CA's expiry.
 */
import { X509Certificate } from 'node:crypto';
import { clone, isObject, metaString, scalarText, stringArray, valueAt, type JsonObject } from './json.js';
import { parseCertificateRequest, type CertificateRequest } from './csr-request.js';
import { bytesField, conditionsOf } from './csr-validation.js';
import { issueFromRequest, type SigningCa } from './certificate-builder.js';
import { formatTime } from './time.js';
import type { Registry } from './registry.js';
import type { ResourceType } from './resource-types.js';
import type { UserInfo } from './user.js';

const KUBE_APISERVER_CLIENT = 'kubernetes.io/kube-apiserver-client';
const KUBELET_CLIENT = 'kubernetes.io/kube-apiserver-client-kubelet';
const KUBELET_SERVING = 'kubernetes.io/kubelet-serving';
const BACKDATE_MS = 5 * 60_000;
const SHORT_LIVED_MS = 8 * 3600_000;
const MIN_DURATION_MS = 10 * 60_000;
const NODE_PREFIX = 'system:node:';
const NODES_GROUP = 'system:nodes';

/** The identity the controller writes as (kcm runs with a privileged certificate). */
const CONTROLLER_USER: UserInfo = { username: 'system:kube-controller-manager', groups: ['system:masters', 'system:authenticated'] };

const KUBELET_SERVING_USAGES = [['digital signature', 'key encipherment', 'server auth'], ['digital signature', 'server auth']];
const KUBELET_CLIENT_USAGES = [['client auth', 'digital signature', 'key encipherment'], ['client auth', 'digital signature']];

function sameSet(a: string[], b: string[]): boolean {
  const sa = new Set(a);
  return sa.size === new Set(b).size && b.every((x) => sa.has(x));
}

/** validAPIServerClientUsages. */
function checkApiServerClient(usages: string[]): string | undefined {
  let clientAuth = false;
  for (const usage of usages) {
    if (usage === 'client auth') clientAuth = true;
    else if (usage !== 'digital signature' && usage !== 'key encipherment') return `invalid usage for client certificate: ${usage}`;
  }
  return clientAuth ? undefined : 'missing required usage for client certificate: client auth';
}

function onlyNodesGroup(request: CertificateRequest): boolean {
  return request.organizations.length === 1 && request.organizations[0] === NODES_GROUP;
}

/** ValidateKubeletServingCSR. */
function checkKubeletServing(request: CertificateRequest, usages: string[]): string | undefined {
  if (!onlyNodesGroup(request)) return 'subject organization is not system:nodes';
  if (request.dnsNames.length === 0 && request.ipAddresses.length === 0) return 'DNS or IP subjectAltName is required';
  if (request.emailAddresses.length > 0) return 'Email subjectAltNames are not allowed';
  if (request.uris.length > 0) return 'URI subjectAltNames are not allowed';
  if (!KUBELET_SERVING_USAGES.some((set) => sameSet(set, usages))) return `usages did not match [${KUBELET_SERVING_USAGES[0].join(' ')}]`;
  if (!request.commonName.startsWith(NODE_PREFIX)) return 'subject common name does not begin with system:node:';
  return undefined;
}

/** ValidateKubeletClientCSR. */
function checkKubeletClient(request: CertificateRequest, usages: string[]): string | undefined {
  if (!onlyNodesGroup(request)) return 'subject organization is not system:nodes';
  if (request.dnsNames.length > 0) return 'DNS subjectAltNames are not allowed';
  if (request.emailAddresses.length > 0) return 'Email subjectAltNames are not allowed';
  if (request.ipAddresses.length > 0) return 'IP subjectAltNames are not allowed';
  if (request.uris.length > 0) return 'URI subjectAltNames are not allowed';
  if (!request.commonName.startsWith(NODE_PREFIX)) return 'subject common name does not begin with system:node:';
  if (!KUBELET_CLIENT_USAGES.some((set) => sameSet(set, usages))) return `usages did not match [${KUBELET_CLIENT_USAGES[0].join(' ')}]`;
  return undefined;
}

const SIGNER_RULES: Record<string, (request: CertificateRequest, usages: string[]) => string | undefined> = {
  [KUBE_APISERVER_CLIENT]: (_request, usages) => checkApiServerClient(usages),
  [KUBELET_CLIENT]: checkKubeletClient,
  [KUBELET_SERVING]: checkKubeletServing,
};

export class CsrSigner {
  private unsubscribe: (() => void) | undefined;
  private readonly pending = new Set<string>();

  constructor(
    private readonly registry: Registry,
    private readonly type: ResourceType,
    private readonly ca: SigningCa,
    private readonly durationSeconds: number,
    private readonly now: () => Date,
  ) {}

  start(): void {
    this.unsubscribe = this.registry.store.subscribe(this.registry.key(this.type), (change) => {
      if (change.type !== 'DELETED') this.schedule(metaString(change.object, 'name'));
    });
    for (const csr of this.registry.store.list(this.registry.key(this.type))) this.schedule(metaString(csr, 'name'));
  }

  stop(): void {
    this.unsubscribe?.();
  }

  /** Handles a CSR after the write that changed it has been answered, as a controller would. */
  private schedule(name: string): void {
    if (this.pending.has(name)) return;
    this.pending.add(name);
    setImmediate(() => {
      this.pending.delete(name);
      this.handle(name);
    });
  }

  private handle(name: string): void {
    const csr = this.registry.store.get(this.registry.key(this.type), '', name);
    if (!csr) return;
    const signer = scalarText(valueAt(csr, 'spec.signerName'));
    const rules = SIGNER_RULES[signer];
    const conditions = conditionsOf(csr);
    if (!rules || !conditions.some((c) => c.type === 'Approved' && c.status === 'True')) return;
    if (conditions.some((c) => c.type === 'Failed' && c.status === 'True')) return;
    if ((bytesField(csr, 'status.certificate')?.length ?? 0) > 0) return;
    let request: CertificateRequest;
    try {
      request = parseCertificateRequest(bytesField(csr, 'spec.request') ?? Buffer.alloc(0));
    } catch {
      return;
    }
    const usages = stringArray(valueAt(csr, 'spec.usages'));
    const problem = rules(request, usages);
    const updated = clone(csr);
    const status = isObject(updated.status) ? updated.status : {};
    updated.status = status;
    if (problem !== undefined) {
      status.conditions = [...(Array.isArray(status.conditions) ? (status.conditions as unknown[]) : []), {
        type: 'Failed', status: 'True', reason: 'SignerValidationFailure', message: problem, lastUpdateTime: formatTime(this.now()),
      }];
    } else {
      const pem = issueFromRequest(this.ca, request, usages, this.validity(csr));
      status.certificate = Buffer.from(pem).toString('base64');
    }
    try {
      this.registry.update(this.type, '', name, updated, 'status', { user: CONTROLLER_USER, now: this.now(), store: this.registry.store });
    } catch {
      // A concurrent change: the next event for this CSR brings it back here.
    }
  }

  private validity(csr: JsonObject): { notBefore: Date; notAfter: Date } {
    const now = this.now().getTime();
    const requested = valueAt(csr, 'spec.expirationSeconds');
    let ttl = this.durationSeconds * 1000;
    if (typeof requested === 'number') ttl = Math.max(MIN_DURATION_MS, Math.min(ttl, requested * 1000));
    const caNotAfter = new Date(new X509Certificate(this.ca.certPem).validTo).getTime();
    const notAfter = Math.min(ttl < SHORT_LIVED_MS ? now + ttl : now + ttl - BACKDATE_MS, caNotAfter);
    return { notBefore: new Date(now - BACKDATE_MS), notAfter: new Date(notAfter) };
  }
}
