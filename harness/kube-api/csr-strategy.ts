/**
 * certificates.k8s.io/v1 CertificateSigningRequests: the registry strategy (the server writes
 * the requester into spec and empties status on create; spec is immutable), the three update
 * paths (the object, /approval, /status), and the admission plugins CertificateApproval,
 * CertificateSigning and CertificateSubjectRestriction.
 */
import { childObject, clone, deepEqual, isObject, metaString, valueAt, type JsonObject } from './json.js';
import { decodeError, normalizeTime, requireBase64 } from './decode.js';
import { bytesField, conditionsOf, validateCsr, validateCsrUpdate, validationOptions } from './csr-validation.js';
import { parseCertificateRequest } from './csr-request.js';
import { forbiddenError, type ApiError } from './status.js';
import { formatTime } from './time.js';
import type { Admission, ResourceType, Strategy, StrategyContext } from './resource-types.js';
import type { Authorizer } from './rbac.js';
import type { UserInfo } from './user.js';

const GROUP = 'certificates.k8s.io';
const VERSION = 'v1';
const KIND = 'CertificateSigningRequest';
export const KUBE_APISERVER_CLIENT_SIGNER = 'kubernetes.io/kube-apiserver-client';
const MASTERS = 'system:masters';
const CSR_RESOURCE = { group: GROUP, resource: 'certificatesigningrequests' };
const CONDITION_TIMES = ['lastUpdateTime', 'lastTransitionTime'];

function decode(csr: JsonObject): void {
  const spec = valueAt(csr, 'spec');
  if (spec !== undefined && !isObject(spec)) throw decodeError(KIND, VERSION, 'json: cannot unmarshal into Go struct field CertificateSigningRequest.spec');
  requireBase64(valueAt(csr, 'spec.request'), KIND, VERSION);
  requireBase64(valueAt(csr, 'status.certificate'), KIND, VERSION);
  const conditions = valueAt(csr, 'status.conditions');
  if (Array.isArray(conditions)) {
    for (const condition of conditions) {
      if (!isObject(condition)) continue;
      for (const field of CONDITION_TIMES) normalizeTime(condition, field, KIND, VERSION);
    }
  }
}

/** populateConditionTimestamps: missing lastUpdateTime is now; a missing lastTransitionTime keeps the old one of the same type and status. */
function populateConditionTimestamps(csr: JsonObject, old: JsonObject, now: Date): void {
  const conditions = valueAt(csr, 'status.conditions');
  if (!Array.isArray(conditions)) return;
  const oldConditions = conditionsOf(old);
  for (const condition of conditions) {
    if (!isObject(condition)) continue;
    if (!condition.lastUpdateTime) condition.lastUpdateTime = formatTime(now);
    if (!condition.lastTransitionTime) {
      const same = oldConditions.find((c) => c.type === condition.type && c.status === condition.status && c.lastTransitionTime);
      condition.lastTransitionTime = same ? same.lastTransitionTime : formatTime(now);
    }
  }
}

/** Copies the old instances of a condition type over the new ones when their number is unchanged. */
function preserveConditionInstances(csr: JsonObject, old: JsonObject, type: string): void {
  const newConditions: unknown = valueAt(csr, 'status.conditions');
  const oldConditions: unknown = valueAt(old, 'status.conditions');
  if (!Array.isArray(newConditions) || !Array.isArray(oldConditions)) return;
  const before = oldConditions as unknown[];
  const newIndices = newConditions.flatMap((c, i) => (isObject(c) && c.type === type ? [i] : []));
  const oldIndices = before.flatMap((c, i) => (isObject(c) && c.type === type ? [i] : []));
  if (newIndices.length !== oldIndices.length) return;
  for (const [i, oldIndex] of oldIndices.entries()) newConditions[newIndices[i]] = clone(before[oldIndex]);
}

function userInfoSpec(user: UserInfo): JsonObject {
  const spec: JsonObject = { username: user.username };
  if (user.uid) spec.uid = user.uid;
  if (user.groups && user.groups.length > 0) spec.groups = [...user.groups];
  if (user.extra && Object.keys(user.extra).length > 0) spec.extra = clone(user.extra);
  return spec;
}

const mainStrategy: Strategy = {
  decode,
  prepareForCreate(csr, ctx) {
    const spec = childObject(csr, 'spec');
    for (const field of ['username', 'uid', 'groups', 'extra']) delete spec[field];
    Object.assign(spec, userInfoSpec(ctx.user));
    csr.status = {};
  },
  validate(csr) {
    return validateCsr(csr, validationOptions(csr, undefined));
  },
  prepareForUpdate(csr, old) {
    csr.spec = clone(old.spec);
    if (old.status === undefined) delete csr.status;
    else csr.status = clone(old.status);
  },
  validateUpdate(csr, old) {
    return validateCsrUpdate(csr, old, validationOptions(csr, old));
  },
};

const statusStrategy: Strategy = {
  decode,
  prepareForUpdate(csr, old, ctx) {
    csr.spec = clone(old.spec);
    preserveConditionInstances(csr, old, 'Approved');
    preserveConditionInstances(csr, old, 'Denied');
    populateConditionTimestamps(csr, old, ctx.now);
  },
  validateUpdate(csr, old) {
    return validateCsrUpdate(csr, old, { ...validationOptions(csr, old), allowSettingCertificate: true });
  },
};

const approvalStrategy: Strategy = {
  decode,
  prepareForUpdate(csr, old, ctx) {
    const conditions = valueAt(csr, 'status.conditions');
    for (const key of Object.keys(csr)) delete csr[key];
    Object.assign(csr, clone(old));
    const status = childObject(csr, 'status');
    if (conditions === undefined) delete status.conditions;
    else status.conditions = clone(conditions);
    populateConditionTimestamps(csr, old, ctx.now);
  },
  validateUpdate(csr, old) {
    return validateCsrUpdate(csr, old, { ...validationOptions(csr, old), allowSettingApprovalConditions: true });
  },
};

/** certauthorization.IsAuthorizedForSignerName: the verb on signers named for the signer, or for "<domain>/*". */
export function isAuthorizedForSignerName(authorizer: Authorizer, user: UserInfo, verb: string, signerName: string): boolean {
  const domain = signerName.split('/')[0];
  return [signerName, `${domain}/*`].some((name) =>
    authorizer.authorize({ user, verb, isResourceRequest: true, path: '', apiGroup: GROUP, resource: 'signers', subresource: '', name, namespace: '' }));
}

function signerOf(csr: JsonObject): string {
  const signer = valueAt(csr, 'spec.signerName');
  return typeof signer === 'string' ? signer : '';
}

function csrAdmission(authorizer: Authorizer): Admission {
  return {
    /** CertificateSubjectRestriction. */
    validateCreate(csr): ApiError | undefined {
      if (signerOf(csr) !== KUBE_APISERVER_CLIENT_SIGNER) return undefined;
      const request = bytesField(csr, 'spec.request');
      const organizations = request ? parseCertificateRequest(request).organizations : [];
      if (!organizations.includes(MASTERS)) return undefined;
      return forbiddenError(CSR_RESOURCE, metaString(csr, 'name'), `use of ${KUBE_APISERVER_CLIENT_SIGNER} signer with ${MASTERS} group is not allowed`);
    },
    /** CertificateApproval on /approval, CertificateSigning on /status. */
    validateUpdate(csr, old, subresource, ctx: StrategyContext): ApiError | undefined {
      const name = metaString(csr, 'name');
      if (subresource === 'approval' && !isAuthorizedForSignerName(authorizer, ctx.user, 'approve', signerOf(csr))) {
        return forbiddenError(CSR_RESOURCE, name, `user not permitted to approve requests with signerName "${signerOf(csr)}"`);
      }
      if (subresource === 'status') {
        const changed = !deepEqual(valueAt(csr, 'status.certificate') ?? null, valueAt(old, 'status.certificate') ?? null)
          || !deepEqual(conditionsOf(csr), conditionsOf(old));
        if (changed && !isAuthorizedForSignerName(authorizer, ctx.user, 'sign', signerOf(old))) {
          return forbiddenError(CSR_RESOURCE, name, `user not permitted to sign requests with signerName "${signerOf(old)}"`);
        }
      }
      return undefined;
    },
  };
}

export function certificateSigningRequests(authorizer: Authorizer): ResourceType {
  return {
    group: GROUP, version: VERSION, resource: 'certificatesigningrequests', kind: KIND, singular: 'certificatesigningrequest',
    namespaced: false, shortNames: ['csr'], categories: [],
    verbs: ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'],
    custom: false, nameRule: null,
    fieldLabels: { supported: ['metadata.name', 'spec.signerName'], style: 'explicit' },
    fields: (csr) => ({ 'metadata.name': metaString(csr, 'name'), 'spec.signerName': signerOf(csr) }),
    strategy: mainStrategy,
    subresources: { approval: approvalStrategy, status: statusStrategy },
    admission: csrAdmission(authorizer),
    allowCreateOnUpdate: false, allowUnconditionalUpdate: true, returnDeletedObject: false,
    strategicSchema: {},
    hasStatus: true,
  };
}
