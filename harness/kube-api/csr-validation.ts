/**
 * Validation of CertificateSigningRequests (k/k pkg/apis/certificates/validation): the request
 * must be a CSR PEM whose signature verifies, usages known, present and unique, the signer
 * name of the form domain/path (and not legacy-unknown through v1), expirationSeconds at least
 * 600, conditions well formed; on updates, conditions cannot be removed, Approved/Denied change
 * only through /approval, and status.certificate is set only through /status, only once.
 * Compatibility options relax a rule when the stored object already breaks it, as upstream.
 */
import { X509Certificate } from 'node:crypto';
import { isObject, stringArray, valueAt, deepEqual, type JsonObject } from './json.js';
import { decodeBase64 } from './base64.js';
import { parseCertificateRequest, firstPemBlock, CsrError } from './csr-request.js';
import { duplicate, forbidden, GoBytes, index, invalid, notSupported, required, tooLong, type FieldError } from './field-errors.js';
import { isDns1123Label, isDns1123Subdomain } from './name-validation.js';

export const LEGACY_UNKNOWN_SIGNER = 'kubernetes.io/legacy-unknown';
const MIN_EXPIRATION_SECONDS = 600;
const DNS1123_SUBDOMAIN_MAX = 253;
/** domain (253) + '/' + a label, a '.' and a subdomain (63 + 1 + 253). */
const MAX_SIGNER_NAME = 253 + 1 + 63 + 1 + 253;

export const VALID_USAGES = [
  'signing', 'digital signature', 'content commitment', 'key encipherment', 'key agreement', 'data encipherment',
  'cert sign', 'crl sign', 'encipher only', 'decipher only', 'any', 'server auth', 'client auth', 'code signing',
  'email protection', 's/mime', 'ipsec end system', 'ipsec tunnel', 'ipsec user', 'timestamping', 'ocsp signing',
  'microsoft sgc', 'netscape sgc',
];
const SORTED_USAGES = [...VALID_USAGES].sort();
const APPROVAL_TYPES = ['Approved', 'Denied'];
const PERMANENT_TYPES = ['Approved', 'Denied', 'Failed'];
/** Condition types whose status can only be "True". */
const TRUE_ONLY_TYPES = new Set(PERMANENT_TYPES);
const ALL_STATUSES = ['False', 'True', 'Unknown'];

export interface CsrValidationOptions {
  allowSettingApprovalConditions: boolean;
  allowSettingCertificate: boolean;
  allowBothApprovedAndDenied: boolean;
  allowLegacySignerName: boolean;
  allowDuplicateConditionTypes: boolean;
  allowEmptyConditionType: boolean;
  allowArbitraryCertificate: boolean;
  allowUnknownUsages: boolean;
  allowDuplicateUsages: boolean;
}

export interface Condition {
  type: string;
  status: string;
  [key: string]: unknown;
}

export function conditionsOf(csr: JsonObject): Condition[] {
  const conditions = valueAt(csr, 'status.conditions');
  if (!Array.isArray(conditions)) return [];
  return conditions.filter(isObject).map((c) => ({ ...c, type: typeof c.type === 'string' ? c.type : '', status: typeof c.status === 'string' ? c.status : '' }));
}

/** The bytes of a base64 []byte field; null when absent (Go's nil). */
export function bytesField(csr: JsonObject, path: string): Buffer | null {
  const value = valueAt(csr, path);
  if (typeof value !== 'string') return null;
  const decoded = decodeBase64(value);
  return Buffer.isBuffer(decoded) ? decoded : null;
}

/** getValidationOptions: strict for new objects, tolerant of what a stored object already has. */
export function validationOptions(csr: JsonObject, old: JsonObject | undefined): CsrValidationOptions {
  const oldConditions = old ? conditionsOf(old) : [];
  const oldUsages = old ? stringArray(valueAt(old, 'spec.usages')) : [];
  const sameCertificate = old !== undefined && equalBytes(bytesField(csr, 'status.certificate'), bytesField(old, 'status.certificate'));
  return {
    allowSettingApprovalConditions: false,
    allowSettingCertificate: false,
    allowBothApprovedAndDenied: oldConditions.some((c) => c.type === 'Approved') && oldConditions.some((c) => c.type === 'Denied'),
    allowLegacySignerName: old !== undefined && valueAt(old, 'spec.signerName') === LEGACY_UNKNOWN_SIGNER,
    allowDuplicateConditionTypes: new Set(oldConditions.map((c) => c.type)).size !== oldConditions.length,
    allowEmptyConditionType: oldConditions.some((c) => c.type === ''),
    allowArbitraryCertificate: sameCertificate || (old !== undefined && certificateProblem(bytesField(old, 'status.certificate')) !== undefined),
    allowUnknownUsages: oldUsages.some((u) => !VALID_USAGES.includes(u)),
    allowDuplicateUsages: new Set(oldUsages).size !== oldUsages.length,
  };
}

function equalBytes(a: Buffer | null, b: Buffer | null): boolean {
  return (a ?? Buffer.alloc(0)).equals(b ?? Buffer.alloc(0));
}

/** validateCertificateSigningRequest without the metadata part (the registry adds ObjectMeta validation). */
export function validateCsr(csr: JsonObject, opts: CsrValidationOptions): FieldError[] {
  const errors: FieldError[] = [];
  const request = bytesField(csr, 'spec.request');
  try {
    parseCertificateRequest(request ?? Buffer.alloc(0));
  } catch (err) {
    if (!(err instanceof CsrError)) throw err;
    errors.push(invalid('spec.request', new GoBytes(request), err.message));
  }
  const usages = stringArray(valueAt(csr, 'spec.usages'));
  if (usages.length === 0) errors.push(required('spec.usages'));
  if (!opts.allowUnknownUsages) {
    for (const [i, usage] of usages.entries()) if (!VALID_USAGES.includes(usage)) errors.push(notSupported(index('spec.usages', i), usage, SORTED_USAGES));
  }
  if (!opts.allowDuplicateUsages) {
    const seen = new Set<string>();
    for (const [i, usage] of usages.entries()) {
      if (seen.has(usage)) errors.push(duplicate(index('spec.usages', i), usage));
      seen.add(usage);
    }
  }
  const signerName = valueAt(csr, 'spec.signerName');
  const signer = typeof signerName === 'string' ? signerName : '';
  if (!opts.allowLegacySignerName && signer === LEGACY_UNKNOWN_SIGNER) {
    errors.push(invalid('spec.signerName', signer, 'the legacy signerName is not allowed via this API version'));
  } else {
    errors.push(...validateSignerName('spec.signerName', signer));
  }
  const expiration = valueAt(csr, 'spec.expirationSeconds');
  if (typeof expiration === 'number' && expiration < MIN_EXPIRATION_SECONDS) {
    errors.push(invalid('spec.expirationSeconds', expiration, 'may not specify a duration less than 600 seconds (10 minutes)'));
  }
  errors.push(...validateConditions(csr, opts));
  if (!opts.allowArbitraryCertificate) {
    const problem = certificateProblem(bytesField(csr, 'status.certificate'));
    if (problem !== undefined) errors.push(invalid('status.certificate', '<certificate data>', problem));
  }
  return errors;
}

/** ValidateSignerName (core validation names.go): <DNS domain with two or more labels>/<dotted subdomains>. */
export function validateSignerName(field: string, signerName: string): FieldError[] {
  if (signerName === '') return [required(field)];
  const segments = signerName.split('/');
  if (segments.length !== 2) return [invalid(field, signerName, "must be a fully qualified domain and path of the form 'example.com/signer-name'")];
  const [domain, path] = segments;
  const errors: FieldError[] = [];
  if (domain.length > DNS1123_SUBDOMAIN_MAX) errors.push(tooLong(field, DNS1123_SUBDOMAIN_MAX));
  const domainLabels = domain.split('.');
  for (const label of domainLabels) {
    const problems = isDns1123Label(label);
    if (problems.length > 0) {
      for (const p of problems) errors.push(invalid(field, domain, `validating label "${label}": ${p}`));
      break;
    }
  }
  if (domainLabels.length < 2) errors.push(invalid(field, domain, 'should be a domain with at least two segments separated by dots'));
  for (const label of path.split('.')) {
    const problems = isDns1123Subdomain(label);
    if (problems.length > 0) {
      for (const p of problems) errors.push(invalid(field, path, `validating label "${label}": ${p}`));
      break;
    }
  }
  if (signerName.length > MAX_SIGNER_NAME) errors.push(tooLong(field, MAX_SIGNER_NAME));
  return errors;
}

function validateConditions(csr: JsonObject, opts: CsrValidationOptions): FieldError[] {
  const errors: FieldError[] = [];
  const seen = new Set<string>();
  let hasApproved = false;
  let hasDenied = false;
  for (const [i, c] of conditionsOf(csr).entries()) {
    const path = index('status.conditions', i);
    if (!opts.allowEmptyConditionType && c.type === '') errors.push(required(`${path}.type`));
    const allowed = TRUE_ONLY_TYPES.has(c.type) ? ['True'] : ALL_STATUSES;
    if (c.status === '') errors.push(required(`${path}.status`));
    else if (!allowed.includes(c.status)) errors.push(notSupported(`${path}.status`, c.status, allowed));
    if (!opts.allowBothApprovedAndDenied) {
      if (c.type === 'Approved') {
        hasApproved = true;
        if (hasDenied) errors.push(invalid(`${path}.type`, c.type, 'Approved and Denied conditions are mutually exclusive'));
      } else if (c.type === 'Denied') {
        hasDenied = true;
        if (hasApproved) errors.push(invalid(`${path}.type`, c.type, 'Approved and Denied conditions are mutually exclusive'));
      }
    }
    if (!opts.allowDuplicateConditionTypes) {
      if (seen.has(c.type)) errors.push(duplicate(`${path}.type`, c.type));
      seen.add(c.type);
    }
  }
  return errors;
}

/** validateCertificate: only CERTIFICATE blocks, no headers, each parses; at least one. Undefined when fine or empty. */
export function certificateProblem(pem: Buffer | null): string | undefined {
  if (!pem || pem.length === 0) return undefined;
  let rest = pem.toString('latin1');
  let blocks = 0;
  for (;;) {
    const block = firstPemBlock(rest);
    if (!block) break;
    if (block.type !== 'CERTIFICATE') return `only CERTIFICATE PEM blocks are allowed, found "${block.type}"`;
    const text = /-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/.exec(rest);
    if (text && text[1].includes(':')) return 'no PEM block headers are permitted';
    try {
      new X509Certificate(block.der);
    } catch {
      return 'x509: malformed certificate';
    }
    blocks++;
    rest = rest.slice(rest.indexOf('-----END CERTIFICATE-----') + '-----END CERTIFICATE-----'.length);
  }
  return blocks === 0 ? 'must contain at least one CERTIFICATE PEM block' : undefined;
}

/** The update rules on top of validateCsr (validateCertificateSigningRequestUpdate). */
export function validateCsrUpdate(csr: JsonObject, old: JsonObject, opts: CsrValidationOptions): FieldError[] {
  const errors = validateCsr(csr, opts);
  const now = conditionsOf(csr);
  const before = conditionsOf(old);
  for (const type of PERMANENT_TYPES) {
    if (now.filter((c) => c.type === type).length < before.filter((c) => c.type === type).length) {
      errors.push(forbidden('status.conditions', `updates may not remove a condition of type "${type}"`));
    }
  }
  if (!opts.allowSettingApprovalConditions) {
    for (const type of APPROVAL_TYPES) {
      const newOnes = now.filter((c) => c.type === type);
      const oldOnes = before.filter((c) => c.type === type);
      if (newOnes.length > oldOnes.length) errors.push(forbidden('status.conditions', `updates may not add a condition of type "${type}"`));
      else if (newOnes.length === oldOnes.length && !deepEqual(newOnes, oldOnes)) {
        errors.push(forbidden('status.conditions', `updates may not modify a condition of type "${type}"\n${conditionDiff(oldOnes, newOnes)}`));
      }
    }
  }
  if (!equalBytes(bytesField(csr, 'status.certificate'), bytesField(old, 'status.certificate'))) {
    if (!opts.allowSettingCertificate) errors.push(forbidden('status.certificate', 'updates may not set certificate content'));
    else if ((bytesField(old, 'status.certificate')?.length ?? 0) > 0) errors.push(forbidden('status.certificate', 'updates may not modify existing certificate content'));
  }
  return errors;
}

/** A readable before/after of changed conditions (upstream prints a cmp.Diff here). */
function conditionDiff(before: Condition[], after: Condition[]): string {
  return `  []certificates.CertificateSigningRequestCondition{\n-\t${JSON.stringify(before)},\n+\t${JSON.stringify(after)},\n  }`;
}
