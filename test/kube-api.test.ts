/**
 * The Kubernetes API server double against real clients: @kubernetes/client-node 1.4 (typed
 * APIs, Watch, makeInformer) and kubectl. Each test asserts what kube-apiserver does, so that
 * code tested against the double behaves the same against a cluster.
 */
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { generateKeyPairSync, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import forge from 'node-forge';
import {
  ApiException, AuthenticationV1Api, CertificatesV1Api, CoordinationV1Api, CoreV1Api, CustomObjectsApi, KubeConfig,
  PatchStrategy, Watch, makeInformer, setHeaderOptions,
  type KubernetesObject, type V1CertificateSigningRequest, type V1Secret,
} from '@kubernetes/client-node';
import { API_AUDIENCES, startKubeApi, type KubeApiDouble, type PolicyRule } from '../harness/kube-api/index.js';

const execFileAsync = promisify(execFile);
const { asn1 } = forge;

const KUBECTL = '/usr/bin/kubectl';
const CSR_GROUP = 'certificates.k8s.io';
const CUSTOM_SIGNER = 'example.com/tunnel';
const CLIENT_SIGNER = 'kubernetes.io/kube-apiserver-client';
const OID_EC_SHA256 = '1.2.840.10045.4.3.2';
const OID_RSA_SHA256 = '1.2.840.113549.1.1.11';
const OID_EXTENSION_REQUEST = '1.2.840.113549.1.9.14';
const WAIT_MS = 5000;
/** tkestack's ClusterCredential: cluster-scoped, fields at the top level, selectable by clusterName and tenantID. */
const CLUSTER_CREDENTIALS = {
  group: 'platform.tkestack.io', version: 'v1', resource: 'clustercredentials', kind: 'ClusterCredential', namespaced: false,
  shortNames: ['cc'], selectableFields: ['clusterName', 'tenantID'],
};

// ---- fixtures ----------------------------------------------------------------------------------

let shared: KubeApiDouble;
let admin: KubeConfig;
let nextId = 0;

test.before(async () => {
  shared = await startKubeApi({ controllerManagerSigner: true });
  shared.addToken('admin-token', { username: 'admin', groups: ['system:masters'] });
  shared.registerResource(CLUSTER_CREDENTIALS);
  admin = config(shared, { token: 'admin-token' });
});

test.after.always(async () => {
  await shared?.close();
});

/** A name no other test uses. */
function unique(prefix: string): string {
  nextId += 1;
  return `${prefix}-${nextId}`;
}

function config(double: KubeApiDouble, user: { token: string } | { cert: string; key: string }): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromString(double.kubeconfig(user));
  return kc;
}

/** A token user with the given rules (cluster-wide unless a rule names namespaces). */
function userWith(double: KubeApiDouble, username: string, rules: PolicyRule[], groups: string[] = []): KubeConfig {
  const token = `${username}-token`;
  double.addToken(token, { username, groups });
  if (rules.length > 0) double.grant({ user: username }, rules);
  return config(double, { token });
}

async function namespace(kc: KubeConfig = admin): Promise<string> {
  const name = unique('ns');
  await kc.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name } } });
  return name;
}

interface Status {
  metadata?: object;
  kind: string;
  apiVersion: string;
  status: string;
  message: string;
  reason?: string;
  code: number;
  details?: { name?: string; group?: string; kind?: string; causes?: Array<{ reason?: string; message?: string; field?: string }> };
}

/** The Status of a failed call: client-node 1.4 throws ApiException with the raw body text. */
async function failure(t: ExecutionContext, call: Promise<unknown>): Promise<Status> {
  const err = await t.throwsAsync(call);
  if (!(err instanceof ApiException)) throw new Error(`expected an ApiException, got ${String(err)}`);
  return JSON.parse(err.body as string) as Status;
}

async function eventually<T>(probe: () => T | undefined | false | Promise<T | undefined | false>, what: string, timeoutMs = WAIT_MS): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A raw HTTPS request to the double, for what client-node does not show (the 401 body). */
function raw(double: KubeApiDouble, path: string, options: { token?: string; method?: string } = {}): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(`${double.url}${path}`, {
      method: options.method ?? 'GET',
      ca: double.caPem,
      headers: options.token ? { Authorization: `Bearer ${options.token}` } : {},
    }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => { body += d.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'] ?? '', body }));
    });
    req.on('error', reject);
    req.end();
  });
}

// ---- certificate requests ----------------------------------------------------------------------

interface CsrOptions {
  cn?: string;
  organizations?: string[];
  dnsNames?: string[];
  keyType?: 'ec' | 'rsa';
}

/**
 * A PKCS#10 request built by hand (node-forge only signs RSA requests): subject and SANs
 * encoded with forge, the public key and signature from node:crypto.
 */
function csrPem(options: CsrOptions = {}): { pem: string; key: KeyObject } {
  const keyType = options.keyType ?? 'ec';
  const { privateKey, publicKey } = keyType === 'ec'
    ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  const draft = forge.pki.createCertificate();
  draft.setSubject([
    ...(options.organizations ?? []).map((value) => ({ name: 'organizationName', value })),
    { name: 'commonName', value: options.cn ?? 'tunnel-agent' },
  ]);
  const attributes: forge.asn1.Asn1[] = [];
  if (options.dnsNames && options.dnsNames.length > 0) {
    draft.setExtensions([{ name: 'subjectAltName', altNames: options.dnsNames.map((value) => ({ type: 2, value })) }]);
    const extensions = (forge.pki as unknown as { certificateExtensionsToAsn1(e: object[]): forge.asn1.Asn1 }).certificateExtensionsToAsn1(draft.extensions as object[]);
    const sequence = (extensions.value as forge.asn1.Asn1[])[0];
    attributes.push(asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(OID_EXTENSION_REQUEST).getBytes()),
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, [sequence]),
    ]));
  }
  const spki = asn1.fromDer(publicKey.export({ type: 'spki', format: 'der' }).toString('binary'));
  const info = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, asn1.integerToDer(0).getBytes()),
    forge.pki.distinguishedNameToAsn1(draft.subject),
    spki,
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, attributes),
  ]);
  const infoDer = Buffer.from(asn1.toDer(info).getBytes(), 'binary');
  const signature = sign('sha256', infoDer, privateKey);
  const algorithm = keyType === 'ec'
    ? [asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(OID_EC_SHA256).getBytes())]
    : [asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(OID_RSA_SHA256).getBytes()), asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, '')];
  const request = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    info,
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, algorithm),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BITSTRING, false, `\x00${signature.toString('binary')}`),
  ]);
  const der = Buffer.from(asn1.toDer(request).getBytes(), 'binary');
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return { pem: `-----BEGIN CERTIFICATE REQUEST-----\n${lines.join('\n')}\n-----END CERTIFICATE REQUEST-----\n`, key: privateKey };
}

function csrBody(name: string, overrides: { request?: string; signerName?: string; usages?: string[]; expirationSeconds?: number } = {}): V1CertificateSigningRequest {
  return {
    apiVersion: 'certificates.k8s.io/v1',
    kind: 'CertificateSigningRequest',
    metadata: { name },
    spec: {
      request: overrides.request ?? Buffer.from(csrPem().pem).toString('base64'),
      signerName: overrides.signerName ?? CUSTOM_SIGNER,
      usages: overrides.usages ?? ['digital signature', 'client auth'],
      ...(overrides.expirationSeconds !== undefined ? { expirationSeconds: overrides.expirationSeconds } : {}),
    },
  };
}

const CSR_READ: PolicyRule = { verbs: ['get', 'list', 'watch'], apiGroups: [CSR_GROUP], resources: ['certificatesigningrequests'] };
const CSR_CREATE: PolicyRule = { verbs: ['create', 'get', 'list', 'watch'], apiGroups: [CSR_GROUP], resources: ['certificatesigningrequests'] };
const APPROVAL_UPDATE: PolicyRule = { verbs: ['update'], apiGroups: [CSR_GROUP], resources: ['certificatesigningrequests/approval'] };
const STATUS_UPDATE: PolicyRule = { verbs: ['update'], apiGroups: [CSR_GROUP], resources: ['certificatesigningrequests/status'] };

function signerRule(verb: 'approve' | 'sign', names: string[]): PolicyRule {
  return { verbs: [verb], apiGroups: [CSR_GROUP], resources: ['signers'], resourceNames: names };
}

function approved(csr: V1CertificateSigningRequest): V1CertificateSigningRequest {
  return {
    ...csr,
    status: {
      ...csr.status,
      conditions: [...(csr.status?.conditions ?? []), { type: 'Approved', status: 'True', reason: 'AutoApproved', message: 'approved by the test' }],
    },
  };
}

// ---- CSR life ----------------------------------------------------------------------------------

test('a CSR from creation to certificate: the server fills in the requester, a watch sees it, approval and signing need the signer verbs, the certificate is set once', async (t) => {
  const requesterName = unique('system:serviceaccount:tunnel:agent');
  const requester = userWith(shared, requesterName, [CSR_CREATE]);
  const approver = userWith(shared, unique('approver'), [CSR_READ, APPROVAL_UPDATE, signerRule('approve', ['example.com/*'])]);
  const outsider = userWith(shared, unique('outsider'), [CSR_READ, APPROVAL_UPDATE, STATUS_UPDATE]);
  const signer = userWith(shared, unique('signer'), [CSR_READ, STATUS_UPDATE, signerRule('sign', [CUSTOM_SIGNER])]);
  const name = unique('csr');

  const events: Array<{ type: string; conditions: string[] }> = [];
  const watch = await new Watch(admin).watch('/apis/certificates.k8s.io/v1/certificatesigningrequests', { fieldSelector: `metadata.name=${name}` },
    (type, object: V1CertificateSigningRequest) => events.push({ type, conditions: (object.status?.conditions ?? []).map((c) => c.type) }), () => undefined);

  const body = csrBody(name);
  body.spec.username = 'someone-else';
  body.spec.groups = ['system:masters'];
  body.status = { conditions: [{ type: 'Approved', status: 'True', reason: 'Forged', message: 'pre-approved' }] };
  const created = await requester.makeApiClient(CertificatesV1Api).createCertificateSigningRequest({ body });
  t.is(created.spec.username, requesterName, 'the server writes the requester, whatever the client said');
  t.deepEqual(created.spec.groups, ['system:authenticated']);
  t.is(created.status?.conditions, undefined, 'a client cannot create a pre-approved request');
  t.regex(created.metadata?.resourceVersion ?? '', /^\d+$/);
  await eventually(() => events.some((e) => e.type === 'ADDED'), 'the watch to see the new CSR');

  const current = await approver.makeApiClient(CertificatesV1Api).readCertificateSigningRequest({ name });
  const denied = await failure(t, outsider.makeApiClient(CertificatesV1Api).replaceCertificateSigningRequestApproval({ name, body: approved(current) }));
  t.is(denied.code, 403);
  t.is(denied.reason, 'Forbidden');
  t.is(denied.message, `certificatesigningrequests.certificates.k8s.io "${name}" is forbidden: user not permitted to approve requests with signerName "${CUSTOM_SIGNER}"`);
  t.deepEqual(denied.details, { name, group: CSR_GROUP, kind: 'certificatesigningrequests' });

  const approvedCsr = await approver.makeApiClient(CertificatesV1Api).replaceCertificateSigningRequestApproval({ name, body: approved(current) });
  const condition = approvedCsr.status?.conditions?.[0];
  t.is(condition?.type, 'Approved');
  t.true(condition?.lastUpdateTime instanceof Date && condition.lastTransitionTime instanceof Date, 'the server fills in condition timestamps');
  await eventually(() => events.some((e) => e.type === 'MODIFIED' && e.conditions.includes('Approved')), 'the watch to see the approval');

  const certificate = Buffer.from(`${shared.caPem}`).toString('base64');
  const unsigned = await failure(t, outsider.makeApiClient(CertificatesV1Api).replaceCertificateSigningRequestStatus({
    name, body: { ...approvedCsr, status: { ...approvedCsr.status, certificate } },
  }));
  t.is(unsigned.message, `certificatesigningrequests.certificates.k8s.io "${name}" is forbidden: user not permitted to sign requests with signerName "${CUSTOM_SIGNER}"`);

  const issued = await signer.makeApiClient(CertificatesV1Api).replaceCertificateSigningRequestStatus({ name, body: { ...approvedCsr, status: { ...approvedCsr.status, certificate } } });
  t.is(issued.status?.certificate, certificate);
  t.deepEqual(issued.status?.conditions?.map((c) => c.type), ['Approved'], 'the approval survives the status update');

  const again = Buffer.from(`${shared.clientCaPem}`).toString('base64');
  const once = await failure(t, signer.makeApiClient(CertificatesV1Api).replaceCertificateSigningRequestStatus({ name, body: { ...issued, status: { ...issued.status, certificate: again } } }));
  t.is(once.code, 422);
  t.is(once.message, `CertificateSigningRequest.certificates.k8s.io "${name}" is invalid: status.certificate: Forbidden: updates may not modify existing certificate content`);
  t.deepEqual(once.details?.causes, [{ reason: 'FieldValueForbidden', message: 'Forbidden: updates may not modify existing certificate content', field: 'status.certificate' }]);
  watch.abort();
});

test('CSR validation: each rule refuses with 422 and the cause the real server gives, and accepts a request that keeps it', async (t) => {
  const csrs = admin.makeApiClient(CertificatesV1Api);
  const ec = Buffer.from(csrPem({ keyType: 'ec' }).pem).toString('base64');
  const rsa = Buffer.from(csrPem({ keyType: 'rsa' }).pem).toString('base64');
  const tampered = (() => {
    const pem = csrPem().pem;
    const der = Buffer.from(pem.split('\n').filter((l) => !l.startsWith('-----')).join(''), 'base64');
    der[der.length - 40] ^= 0xff;
    const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
    return Buffer.from(`-----BEGIN CERTIFICATE REQUEST-----\n${lines.join('\n')}\n-----END CERTIFICATE REQUEST-----\n`).toString('base64');
  })();
  const notCsr = Buffer.from(shared.caPem).toString('base64');

  const cases: Array<{ rule: string; good: Parameters<typeof csrBody>[1]; bad: Parameters<typeof csrBody>[1]; field: string; reason: string; message: RegExp }> = [
    { rule: 'a CERTIFICATE REQUEST PEM (ECDSA P-256)', good: { request: ec }, bad: { request: notCsr }, field: 'spec.request', reason: 'FieldValueInvalid', message: /^Invalid value: \[\]byte\{0x2d, 0x2d, .*\}: PEM block type must be CERTIFICATE REQUEST$/ },
    { rule: 'a signature that verifies (RSA)', good: { request: rsa }, bad: { request: tampered }, field: 'spec.request', reason: 'FieldValueInvalid', message: /: (x509: ECDSA verification failure|x509: malformed certificate request)$/ },
    { rule: 'usages present', good: { usages: ['client auth'] }, bad: { usages: [] }, field: 'spec.usages', reason: 'FieldValueRequired', message: /^Required value$/ },
    { rule: 'usages known', good: { usages: ['key encipherment', 'server auth'] }, bad: { usages: ['client auth', 'tunnel auth'] }, field: 'spec.usages[1]', reason: 'FieldValueNotSupported', message: /^Unsupported value: "tunnel auth": supported values: "any", "cert sign", / },
    { rule: 'usages unique', good: { usages: ['digital signature', 'client auth'] }, bad: { usages: ['client auth', 'client auth'] }, field: 'spec.usages[1]', reason: 'FieldValueDuplicate', message: /^Duplicate value: "client auth"$/ },
    { rule: 'a signerName of the form domain/path', good: { signerName: 'tunnel.example.com/server' }, bad: { signerName: 'example/server' }, field: 'spec.signerName', reason: 'FieldValueInvalid', message: /^Invalid value: "example": should be a domain with at least two segments separated by dots$/ },
    { rule: 'a signerName with one slash', good: { signerName: 'example.com/a.b' }, bad: { signerName: 'tunnel' }, field: 'spec.signerName', reason: 'FieldValueInvalid', message: /^Invalid value: "tunnel": must be a fully qualified domain and path of the form 'example.com\/signer-name'$/ },
    { rule: 'not the legacy signer', good: { signerName: CLIENT_SIGNER }, bad: { signerName: 'kubernetes.io/legacy-unknown' }, field: 'spec.signerName', reason: 'FieldValueInvalid', message: /^Invalid value: "kubernetes.io\/legacy-unknown": the legacy signerName is not allowed via this API version$/ },
    { rule: 'expirationSeconds of at least 600', good: { expirationSeconds: 600 }, bad: { expirationSeconds: 599 }, field: 'spec.expirationSeconds', reason: 'FieldValueInvalid', message: /^Invalid value: 599: may not specify a duration less than 600 seconds \(10 minutes\)$/ },
  ];
  for (const c of cases) {
    const good = await csrs.createCertificateSigningRequest({ body: csrBody(unique('valid'), c.good) });
    t.truthy(good.metadata?.uid, `${c.rule}: accepted`);
    const name = unique('invalid');
    const status = await failure(t, csrs.createCertificateSigningRequest({ body: csrBody(name, c.bad) }));
    t.is(status.code, 422, c.rule);
    t.is(status.reason, 'Invalid', c.rule);
    t.is(status.details?.kind, 'CertificateSigningRequest', c.rule);
    t.is(status.details?.group, CSR_GROUP, c.rule);
    t.is(status.details?.name, name, c.rule);
    const cause = status.details?.causes?.[0];
    t.is(cause?.field, c.field, c.rule);
    t.is(cause?.reason, c.reason, c.rule);
    t.regex(cause?.message ?? '', c.message, c.rule);
    t.true(status.message.startsWith(`CertificateSigningRequest.certificates.k8s.io "${name}" is invalid: ${c.field}: `), `${c.rule}: ${status.message.slice(0, 200)}`);
  }
});

test('CSR update paths: PUT keeps spec and status, /approval keeps only conditions, /status keeps all but spec and approval; condition rules hold', async (t) => {
  const csrs = admin.makeApiClient(CertificatesV1Api);
  const name = unique('paths');
  const created = await csrs.createCertificateSigningRequest({ body: csrBody(name) });

  const put = await csrs.replaceCertificateSigningRequest({ name, body: {
    ...approved(created),
    metadata: { ...created.metadata, labels: { team: 'tunnel' } },
    spec: { ...created.spec, usages: ['server auth'], signerName: 'other.example.com/x' },
  } });
  t.deepEqual(put.metadata?.labels, { team: 'tunnel' }, 'metadata changes through the object');
  t.deepEqual(put.spec.usages, created.spec.usages, 'spec is immutable');
  t.is(put.status?.conditions, undefined, 'status does not change through the object');

  const unconditional = await csrs.replaceCertificateSigningRequest({ name, body: { ...put, metadata: { ...put.metadata, resourceVersion: undefined, labels: { team: 'core' } } } });
  t.deepEqual(unconditional.metadata?.labels, { team: 'core' }, 'CSRs allow an update without resourceVersion');
  const stale = await failure(t, csrs.replaceCertificateSigningRequest({ name, body: { ...put, metadata: { ...put.metadata, labels: { team: 'late' } } } }));
  t.is(stale.code, 409);
  t.is(stale.reason, 'Conflict');
  t.is(stale.message, `Operation cannot be fulfilled on certificatesigningrequests.certificates.k8s.io "${name}": the object has been modified; please apply your changes to the latest version and try again`);

  const viaApproval = await csrs.replaceCertificateSigningRequestApproval({ name, body: {
    ...approved(unconditional), metadata: { ...unconditional.metadata, labels: { team: 'ignored' } },
  } });
  t.deepEqual(viaApproval.metadata?.labels, { team: 'core' }, '/approval keeps nothing but the conditions');
  t.deepEqual(viaApproval.status?.conditions?.map((c) => c.type), ['Approved']);

  const conditions = viaApproval.status?.conditions ?? [];
  const rules: Array<{ what: string; conditions: typeof conditions; message: string }> = [
    { what: 'Approved and Denied exclude each other', conditions: [...conditions, { type: 'Denied', status: 'True', reason: 'No', message: '' }], message: 'status.conditions[1].type: Invalid value: "Denied": Approved and Denied conditions are mutually exclusive' },
    { what: 'a condition cannot be removed', conditions: [], message: 'status.conditions: Forbidden: updates may not remove a condition of type "Approved"' },
    { what: 'one condition of each type', conditions: [...conditions, { ...conditions[0] }], message: 'status.conditions[1].type: Duplicate value: "Approved"' },
    { what: 'Failed must be True', conditions: [...conditions, { type: 'Failed', status: 'False', reason: 'X', message: '' }], message: 'status.conditions[1].status: Unsupported value: "False": supported values: "True"' },
  ];
  for (const rule of rules) {
    const refused = await failure(t, csrs.replaceCertificateSigningRequestApproval({ name, body: { ...viaApproval, status: { conditions: rule.conditions } } }));
    t.is(refused.code, 422, rule.what);
    t.is(refused.message, `CertificateSigningRequest.certificates.k8s.io "${name}" is invalid: ${rule.message}`, rule.what);
  }

  const addApproved = await failure(t, csrs.replaceCertificateSigningRequestStatus({ name, body: {
    ...viaApproval, status: { conditions: [...conditions, { type: 'Denied', status: 'True', reason: 'ViaStatus', message: '' }] },
  } }));
  t.regex(addApproved.message, /updates may not add a condition of type "Denied"/);
  const failed = await csrs.replaceCertificateSigningRequestStatus({ name, body: {
    ...viaApproval,
    spec: { ...viaApproval.spec, usages: ['any'] },
    status: { conditions: [{ ...conditions[0], reason: 'Rewritten' }, { type: 'Failed', status: 'True', reason: 'SignerValidationFailure', message: 'no' }] },
  } });
  t.deepEqual(failed.spec.usages, created.spec.usages, '/status keeps spec');
  t.is(failed.status?.conditions?.[0].reason, 'AutoApproved', '/status keeps the approval condition as it was');
  t.is(failed.status?.conditions?.[1].type, 'Failed', '/status may add Failed');
});

test('creating over an existing name is 409 AlreadyExists; generateName gets five random characters', async (t) => {
  const core = admin.makeApiClient(CoreV1Api);
  const ns = await namespace();
  await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: 'creds' }, stringData: { token: 'x' } } });
  const exists = await failure(t, core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: 'creds' } } }));
  t.deepEqual(exists, {
    kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: 'secrets "creds" already exists', reason: 'AlreadyExists',
    details: { name: 'creds', kind: 'secrets' }, code: 409,
  });
  const generated = await core.createNamespacedSecret({ namespace: ns, body: { metadata: { generateName: 'creds-' } } });
  t.regex(generated.metadata?.name ?? '', /^creds-[bcdfghjklmnpqrstvwxz2456789]{5}$/);
  t.regex(String(generated.metadata?.creationTimestamp?.toISOString()), /\.000Z$/, 'creationTimestamp has whole seconds');
  const missing = await failure(t, core.readNamespacedSecret({ name: 'nope', namespace: ns }));
  t.deepEqual(missing.details, { name: 'nope', kind: 'secrets' });
  t.is(missing.message, 'secrets "nope" not found');
  const noNamespace = await failure(t, core.createNamespacedConfigMap({ namespace: unique('absent'), body: { metadata: { name: 'c' } } }));
  t.is(noNamespace.code, 404);
  t.regex(noNamespace.message, /^namespaces "absent-\d+" not found$/);
});

// ---- lists and watches -------------------------------------------------------------------------

test('list then watch from its resourceVersion sees only later changes; after compactHistory the same watch gets one ERROR 410 and closes', async (t) => {
  const double = await startKubeApi();
  try {
    double.addToken('t', { username: 'admin', groups: ['system:masters'] });
    const kc = config(double, { token: 't' });
    const core = kc.makeApiClient(CoreV1Api);
    const ns = await namespace(kc);
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'before' } } });
    const list = await core.listNamespacedConfigMap({ namespace: ns });
    const rv = list.metadata?.resourceVersion ?? '';
    t.deepEqual(list.items.map((i) => i.metadata?.name), ['before', 'kube-root-ca.crt']);
    t.is(list.items[0].kind, undefined, 'typed list items carry no kind');
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'after' } } });

    const seen: string[] = [];
    let closed = false;
    const path = `/api/v1/namespaces/${ns}/configmaps`;
    const first = await new Watch(kc).watch(path, { resourceVersion: rv }, (type, object: KubernetesObject) => seen.push(`${type} ${object.metadata?.name}`), () => { closed = true; });
    await eventually(() => seen.length === 1, 'the change after the list');
    t.deepEqual(seen, ['ADDED after']);
    await core.deleteNamespacedConfigMap({ name: 'after', namespace: ns });
    await eventually(() => seen.length === 2, 'the deletion');
    t.is(seen[1], 'DELETED after');
    first.abort();
    await eventually(() => closed, 'the aborted watch to end');

    const atCompaction = (await core.listNamespacedConfigMap({ namespace: ns })).metadata?.resourceVersion;
    double.compactHistory();
    const errors: Status[] = [];
    let done: unknown = 'pending';
    await new Watch(kc).watch(path, { resourceVersion: rv }, (type, object: Status) => { if (type === 'ERROR') errors.push(object); }, (err: unknown) => { done = err; });
    await eventually(() => done !== 'pending', 'the expired watch to close');
    t.is(done, null, 'the 410 arrives on a 200 stream that then closes');
    t.deepEqual(errors, [{ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `too old resource version: ${rv} (${atCompaction})`, reason: 'Expired', code: 410 }]);
    const watchRequest = double.requests.find((r) => r.path.startsWith(path) && r.path.includes('watch=true'));
    t.is(watchRequest?.status, 200);
  } finally {
    await double.close();
  }
});

test('makeInformer lists, watches, and after a 410 lists again; the cache stays right', async (t) => {
  const double = await startKubeApi();
  try {
    double.addToken('t', { username: 'admin', groups: ['system:masters'] });
    const kc = config(double, { token: 't' });
    const core = kc.makeApiClient(CoreV1Api);
    const ns = await namespace(kc);
    await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: 'one' } } });
    const path = `/api/v1/namespaces/${ns}/secrets`;
    const informer = makeInformer<V1Secret>(kc, path, () => core.listNamespacedSecret({ namespace: ns }));
    const added: string[] = [];
    const errors: unknown[] = [];
    informer.on('add', (s) => added.push(s.metadata?.name ?? ''));
    informer.on('error', (err) => errors.push(err));
    await informer.start();
    await eventually(() => added.includes('one'), 'the informer to list');
    await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: 'two' } } });
    await eventually(() => added.includes('two'), 'the informer to watch');
    const listsBefore = double.requests.filter((r) => r.path === path).length;

    // While no watch runs (all of this happens before the informer's new watch arrives), a
    // secret goes and the history is compacted: the informer's resourceVersion is now too old.
    double.closeWatches();
    double.objects.delete('', 'secrets', 'one', ns);
    double.compactHistory();
    await eventually(() => double.requests.filter((r) => r.path === path).length > listsBefore, 'the informer to list again after 410');
    await eventually(() => informer.list(ns).length === 1, 'the relist to drop the deleted secret');
    t.deepEqual(informer.list(ns).map((s) => s.metadata?.name), ['two']);
    const expired = double.requests.filter((r) => r.path.startsWith(`${path}?`) && r.path.includes('watch=true'));
    t.true(expired.length >= 2, 'watched, then watched again from the old resourceVersion');
    await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: 'three' } } });
    await eventually(() => added.includes('three'), 'the informer to watch again after relisting');
    t.deepEqual(errors, []);
    await informer.stop();
  } finally {
    await double.close();
  }
});

test('a watch filtered by a selector sees an object that stops matching as DELETED and one that starts as ADDED; bookmarks and timeoutSeconds', async (t) => {
  const core = admin.makeApiClient(CoreV1Api);
  const ns = await namespace();
  const events: string[] = [];
  let closed = false;
  const watch = new Watch(admin);
  await watch.watch(`/api/v1/namespaces/${ns}/configmaps`, { labelSelector: 'tier in (front,back),!legacy', allowWatchBookmarks: true, timeoutSeconds: 3 },
    (type, object: KubernetesObject) => events.push(type === 'BOOKMARK' ? 'BOOKMARK' : `${type} ${object.metadata?.name}`), () => { closed = true; });
  await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'a', labels: { tier: 'front' } } } });
  await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'b', labels: { tier: 'db' } } } });
  await core.patchNamespacedConfigMap({ name: 'a', namespace: ns, body: { metadata: { labels: { legacy: 'yes' } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
  await core.patchNamespacedConfigMap({ name: 'b', namespace: ns, body: { metadata: { labels: { tier: 'back' } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
  await eventually(() => events.filter((e) => e !== 'BOOKMARK').length === 3, 'three filtered events');
  t.deepEqual(events.filter((e) => e !== 'BOOKMARK'), ['ADDED a', 'DELETED a', 'ADDED b']);
  await eventually(() => events.includes('BOOKMARK'), 'a bookmark');
  await eventually(() => closed, 'timeoutSeconds to end the watch', 6000);
  t.pass();
});

test('field and label selectors: name, signerName, !=, set forms; an unsupported field label is 400 in the wording of its type', async (t) => {
  const core = admin.makeApiClient(CoreV1Api);
  const csrs = admin.makeApiClient(CertificatesV1Api);
  const ns = await namespace();
  for (const [name, labels] of [['web', { app: 'web', env: 'prod' }], ['db', { app: 'db', env: 'prod' }], ['tmp', { app: 'web' }]] as const) {
    await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name, labels }, type: name === 'tmp' ? 'example.com/temp' : 'Opaque' } });
  }
  const names = async (query: { labelSelector?: string; fieldSelector?: string }) => (await core.listNamespacedSecret({ namespace: ns, ...query })).items.map((i) => i.metadata?.name);
  t.deepEqual(await names({ fieldSelector: 'metadata.name=db' }), ['db']);
  t.deepEqual(await names({ fieldSelector: 'metadata.name!=db,type==Opaque' }), ['web']);
  t.deepEqual(await names({ labelSelector: 'app=web' }), ['tmp', 'web']);
  t.deepEqual(await names({ labelSelector: 'env' }), ['db', 'web']);
  t.deepEqual(await names({ labelSelector: '!env' }), ['tmp']);
  t.deepEqual(await names({ labelSelector: 'app notin (db),env!=dev' }), ['tmp', 'web']);
  t.deepEqual(await names({ labelSelector: 'app in (db, web),env=prod' }), ['db', 'web']);

  const signer = unique('selector.example.com/tunnel');
  await csrs.createCertificateSigningRequest({ body: csrBody(unique('sel'), { signerName: signer }) });
  const bySigner = await csrs.listCertificateSigningRequest({ fieldSelector: `spec.signerName=${signer}` });
  t.is(bySigner.items.length, 1);

  const csrLabel = await failure(t, csrs.listCertificateSigningRequest({ fieldSelector: 'spec.username=admin' }));
  t.deepEqual(csrLabel, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: 'field label not supported: spec.username', reason: 'BadRequest', code: 400 });
  const cmLabel = await failure(t, core.listNamespacedConfigMap({ namespace: ns, fieldSelector: 'data.x=y' }));
  t.is(cmLabel.message, '"data.x" is not a known field selector: only "metadata.name", "metadata.namespace"');
  const nsLabel = await failure(t, core.listNamespace({ fieldSelector: 'metadata.namespace=x' }));
  t.is(nsLabel.message, 'field label not supported: metadata.namespace');
  const broken = await failure(t, core.listNamespacedSecret({ namespace: ns, fieldSelector: 'metadata.name' }));
  t.is(broken.message, "invalid selector: 'metadata.name'; can't understand 'metadata.name'");
});

test('lists page with limit and continue at one resourceVersion; resourceVersionMatch=Exact lists the past', async (t) => {
  const core = admin.makeApiClient(CoreV1Api);
  const ns = await namespace();
  for (const name of ['a', 'b', 'c']) await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name } } });
  const first = await core.listNamespacedConfigMap({ namespace: ns, limit: 2 });
  t.deepEqual(first.items.map((i) => i.metadata?.name), ['a', 'b']);
  t.is(first.metadata?.remainingItemCount, 2);
  await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'b2' } } });
  const rest = await core.listNamespacedConfigMap({ namespace: ns, limit: 2, _continue: first.metadata?._continue });
  t.deepEqual(rest.items.map((i) => i.metadata?.name), ['c', 'kube-root-ca.crt'], 'the continuation is consistent with the first page');
  t.is(rest.metadata?.resourceVersion, first.metadata?.resourceVersion);
  const past = await core.listNamespacedConfigMap({ namespace: ns, resourceVersion: first.metadata?.resourceVersion, resourceVersionMatch: 'Exact' });
  t.false(past.items.some((i) => i.metadata?.name === 'b2'));
  const now = await core.listNamespacedConfigMap({ namespace: ns });
  t.true(now.items.some((i) => i.metadata?.name === 'b2'));
  const future = await failure(t, core.listNamespacedConfigMap({ namespace: ns, resourceVersion: String(Number(now.metadata?.resourceVersion) + 1000) }));
  t.is(future.code, 504);
  t.regex(future.message, /^Timeout: Too large resource version: \d+, current: \d+$/);
});

// ---- authentication and authorization ----------------------------------------------------------

test('unauthenticated requests get the 401 Status; forbidden ones 403 with RBAC\'s wording for cluster, namespace, subresource and core scope', async (t) => {
  const unauthorized = { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: 'Unauthorized', reason: 'Unauthorized', code: 401 };
  for (const token of [undefined, 'no-such-token']) {
    const reply = await raw(shared, '/api/v1/namespaces', token === undefined ? {} : { token });
    t.is(reply.status, 401);
    t.is(reply.type, 'application/json');
    t.deepEqual(JSON.parse(reply.body), unauthorized);
  }
  const err = await t.throwsAsync(config(shared, { token: 'no-such-token' }).makeApiClient(CoreV1Api).listNamespace());
  t.true(err instanceof ApiException && err.code === 401 && err.body === undefined, 'client-node reports a 401 without its body');

  const nobody = unique('system:serviceaccount:tunnel:server');
  const kc = userWith(shared, nobody, [{ verbs: ['get'], apiGroups: [''], resources: ['secrets'], namespaces: ['allowed'] }]);
  const cluster = await failure(t, kc.makeApiClient(CertificatesV1Api).createCertificateSigningRequest({ body: csrBody(unique('denied')) }));
  t.deepEqual(cluster, {
    kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', reason: 'Forbidden', code: 403,
    message: `certificatesigningrequests.certificates.k8s.io is forbidden: User "${nobody}" cannot create resource "certificatesigningrequests" in API group "certificates.k8s.io" at the cluster scope`,
    details: { group: CSR_GROUP, kind: 'certificatesigningrequests' },
  });
  const core = await failure(t, kc.makeApiClient(CoreV1Api).readNamespacedSecret({ name: 'creds', namespace: 'other' }));
  t.is(core.message, `secrets "creds" is forbidden: User "${nobody}" cannot get resource "secrets" in API group "" in the namespace "other"`);
  t.deepEqual(core.details, { name: 'creds', kind: 'secrets' });
  const allowed = await failure(t, kc.makeApiClient(CoreV1Api).readNamespacedSecret({ name: 'creds', namespace: 'allowed' }));
  t.is(allowed.code, 404, 'the namespaced grant lets the get through (to a missing secret)');
  const sub = await failure(t, kc.makeApiClient(CertificatesV1Api).replaceCertificateSigningRequestApproval({ name: 'x', body: csrBody('x') }));
  t.is(sub.message, `certificatesigningrequests.certificates.k8s.io "x" is forbidden: User "${nobody}" cannot update resource "certificatesigningrequests/approval" in API group "certificates.k8s.io" at the cluster scope`);
  const version = await raw(shared, '/version', { token: `${nobody}-token` });
  t.is(version.status, 200, 'discovery and /version are open to every authenticated user');
  t.is((JSON.parse(version.body) as { gitVersion: string }).gitVersion, 'v1.32.0');
  shared.revokeAll({ user: nobody });
  const revoked = await failure(t, kc.makeApiClient(CoreV1Api).readNamespacedSecret({ name: 'creds', namespace: 'allowed' }));
  t.is(revoked.code, 403);
  t.true(shared.requests.some((r) => r.user === nobody && r.status === 403 && r.path === '/api/v1/namespaces/allowed/secrets/creds'));
});

test('TokenRequest issues a ServiceAccount token; TokenReview validates it for its audiences only; it stops working with its ServiceAccount', async (t) => {
  const core = admin.makeApiClient(CoreV1Api);
  const reviews = admin.makeApiClient(AuthenticationV1Api);
  const ns = await namespace();
  const sa = await core.createNamespacedServiceAccount({ namespace: ns, body: { metadata: { name: 'agent' } } });
  const requested = await core.createNamespacedServiceAccountToken({ name: 'agent', namespace: ns, body: { spec: { audiences: ['system:konnectivity-server'], expirationSeconds: 3600 } } });
  const token = requested.status?.token ?? '';
  t.regex(token, /^[\w-]+\.[\w-]+\.[\w-]+$/);
  const expires = requested.status?.expirationTimestamp as Date;
  t.true(Math.abs(expires.getTime() - Date.now() - 3600_000) < 5000);
  t.deepEqual(requested.spec.audiences, ['system:konnectivity-server']);
  const defaulted = await core.createNamespacedServiceAccountToken({ name: 'agent', namespace: ns, body: { spec: { audiences: [] } } });
  t.deepEqual(defaulted.spec.audiences, [...API_AUDIENCES]);
  t.is(defaulted.spec.expirationSeconds, 3600);
  const tooShort = await failure(t, core.createNamespacedServiceAccountToken({ name: 'agent', namespace: ns, body: { spec: { audiences: [], expirationSeconds: 599 } } }));
  t.is(tooShort.message, 'TokenRequest.authentication.k8s.io "agent" is invalid: spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes');
  const noSa = await failure(t, core.createNamespacedServiceAccountToken({ name: 'ghost', namespace: ns, body: { spec: { audiences: [] } } }));
  t.is(noSa.message, 'serviceaccounts "ghost" not found');

  const matching = await reviews.createTokenReview({ body: { spec: { token, audiences: ['system:konnectivity-server', 'other'] } } });
  t.true(matching.status?.authenticated);
  t.is(matching.status?.user?.username, `system:serviceaccount:${ns}:agent`);
  t.is(matching.status?.user?.uid, sa.metadata?.uid);
  t.deepEqual(matching.status?.user?.groups, ['system:serviceaccounts', `system:serviceaccounts:${ns}`, 'system:authenticated']);
  t.deepEqual(matching.status?.audiences, ['system:konnectivity-server']);
  t.regex(matching.status?.user?.extra?.['authentication.kubernetes.io/credential-id']?.[0] ?? '', /^JTI=[0-9a-f-]{36}$/);

  const other = await reviews.createTokenReview({ body: { spec: { token, audiences: ['https://other.example.com'] } } });
  t.not(other.status?.authenticated, true);
  t.is(other.status?.error, '[invalid bearer token, token audiences ["system:konnectivity-server"] is invalid for the target audiences ["https://other.example.com"]]');
  const garbage = await reviews.createTokenReview({ body: { spec: { token: 'garbage' } } });
  t.not(garbage.status?.authenticated, true);
  t.is(garbage.status?.error, 'invalid bearer token');
  const staticReview = await reviews.createTokenReview({ body: { spec: { token: 'admin-token' } } });
  t.deepEqual(staticReview.status?.audiences, [...API_AUDIENCES]);
  t.deepEqual(staticReview.status?.user?.groups, ['system:masters', 'system:authenticated']);

  // The default-audience token authenticates requests as the ServiceAccount.
  const asSa = config(shared, { token: defaulted.status?.token ?? '' });
  const denied = await failure(t, asSa.makeApiClient(CoreV1Api).listNamespacedSecret({ namespace: ns }));
  t.is(denied.message, `secrets is forbidden: User "system:serviceaccount:${ns}:agent" cannot list resource "secrets" in API group "" in the namespace "${ns}"`);
  shared.grant({ group: `system:serviceaccounts:${ns}` }, [{ verbs: ['list'], apiGroups: [''], resources: ['secrets'], namespaces: [ns] }]);
  t.true(Array.isArray((await asSa.makeApiClient(CoreV1Api).listNamespacedSecret({ namespace: ns })).items), 'granted through its group');
  const audienceOnly = config(shared, { token });
  const wrongAudience = await t.throwsAsync(audienceOnly.makeApiClient(CoreV1Api).listNamespacedSecret({ namespace: ns }));
  t.is((wrongAudience as ApiException<unknown>).code, 401, 'a token for another audience does not authenticate to the API server');

  await core.deleteNamespacedServiceAccount({ name: 'agent', namespace: ns });
  const gone = await reviews.createTokenReview({ body: { spec: { token, audiences: ['system:konnectivity-server'] } } });
  t.not(gone.status?.authenticated, true);
  t.is(gone.status?.error, '[invalid bearer token, serviceaccounts "agent" not found]');
  const after = await t.throwsAsync(asSa.makeApiClient(CoreV1Api).listNamespacedSecret({ namespace: ns }));
  t.is((after as ApiException<unknown>).code, 401);
});

test('kubeconfig: client certificates from issueClientCertificate authenticate (CN user, O groups); tls-server-name and namespace are written', async (t) => {
  const ops = shared.issueClientCertificate({ username: 'ops', groups: ['system:masters'] });
  t.true(new X509Certificate(ops.cert).checkIssued(new X509Certificate(shared.clientCaPem)));
  const kc = config(shared, ops);
  t.true((await kc.makeApiClient(CoreV1Api).listNamespace()).items.length >= 4);
  t.true(shared.requests.some((r) => r.user === 'ops' && r.path === '/api/v1/namespaces' && r.status === 200));

  const text = shared.kubeconfig({ token: 'admin-token' }, { tlsServerName: 'kubernetes.default.svc', namespace: 'kube-system', proxyUrl: 'http://127.0.0.1:1' });
  t.regex(text, /tls-server-name: "kubernetes.default.svc"/);
  t.regex(text, /proxy-url: "http:\/\/127.0.0.1:1"/);
  const named = new KubeConfig();
  named.loadFromString(shared.kubeconfig({ token: 'admin-token' }, { tlsServerName: 'kubernetes.default.svc', namespace: 'kube-system' }));
  t.is(named.getContextObject(named.getCurrentContext())?.namespace, 'kube-system');
  t.true((await named.makeApiClient(CoreV1Api).readNamespace({ name: 'kube-system' })).metadata?.name === 'kube-system', 'the serving certificate is valid for the in-cluster name');
  const wrongName = new KubeConfig();
  wrongName.loadFromString(shared.kubeconfig({ token: 'admin-token' }, { tlsServerName: 'tunnel.example.com' }));
  const refused: unknown = await wrongName.makeApiClient(CoreV1Api).listNamespace().then(() => 'answered', (err: unknown) => err);
  t.regex(String((refused as { message?: string }).message), /tunnel\.example\.com|altnames|does not match/i);
});

// ---- Secrets, ConfigMaps, Leases ---------------------------------------------------------------

test('Secrets, ConfigMaps and Leases: create, get, update, JSON patch (with test), merge patch, strategic merge, delete', async (t) => {
  const core = admin.makeApiClient(CoreV1Api);
  const leases = admin.makeApiClient(CoordinationV1Api);
  const ns = await namespace();
  const jsonPatch = setHeaderOptions('Content-Type', PatchStrategy.JsonPatch);
  const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

  const secret = await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: 'tls' }, stringData: { 'ca.crt': 'pem' } } });
  t.deepEqual(secret.data, { 'ca.crt': Buffer.from('pem').toString('base64') }, 'stringData is folded into data');
  t.is(secret.type, 'Opaque');
  const badData = await failure(t, core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: 'bad' }, data: { k: 'not base64!' } } }));
  t.is(badData.message, 'Secret in version "v1" cannot be handled as a Secret: illegal base64 data at input byte 3');
  const badKey = await failure(t, core.createNamespacedSecret({ namespace: ns, body: { metadata: { name: 'bad' }, data: { 'a b': '' } } }));
  t.regex(badKey.message, /^Secret "bad" is invalid: data\[a b\]: Invalid value: "a b": a valid config key must consist of alphanumeric characters, '-', '_' or '.' \(e.g. 'key.name', {2}or 'KEY_NAME', {2}or 'key-name', regex used for validation is '\[-._a-zA-Z0-9\]\+'\)$/);
  const updated = await core.replaceNamespacedSecret({ name: 'tls', namespace: ns, body: { ...secret, data: { ...secret.data, extra: 'eA==' } } });
  t.not(updated.metadata?.resourceVersion, secret.metadata?.resourceVersion);
  const same = await core.replaceNamespacedSecret({ name: 'tls', namespace: ns, body: updated });
  t.is(same.metadata?.resourceVersion, updated.metadata?.resourceVersion, 'an update that changes nothing writes nothing');
  const typeChange = await failure(t, core.replaceNamespacedSecret({ name: 'tls', namespace: ns, body: { ...updated, type: 'kubernetes.io/tls' } }));
  t.regex(typeChange.message, /type: Invalid value: "kubernetes.io\/tls": field is immutable/);

  const patched = await core.patchNamespacedSecret({ name: 'tls', namespace: ns, body: [
    { op: 'test', path: '/data/extra', value: 'eA==' },
    { op: 'replace', path: '/data/extra', value: 'eQ==' },
  ] }, jsonPatch);
  t.is(patched.data?.extra, 'eQ==');
  const failedTest = await failure(t, core.patchNamespacedSecret({ name: 'tls', namespace: ns, body: [{ op: 'test', path: '/data/extra', value: 'eA==' }] }, jsonPatch));
  t.deepEqual(failedTest, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: 'the server rejected our request due to an error in our request', reason: 'Invalid', details: {}, code: 422 });
  const merged = await core.patchNamespacedSecret({ name: 'tls', namespace: ns, body: { data: { extra: null }, metadata: { labels: { rotated: 'yes' } } } }, mergePatch);
  t.deepEqual(Object.keys(merged.data ?? {}), ['ca.crt']);
  t.deepEqual(merged.metadata?.labels, { rotated: 'yes' });
  const unknownType = await failure(t, core.patchNamespacedSecret({ name: 'tls', namespace: ns, body: {} }, setHeaderOptions('Content-Type', 'application/x-tunnel-patch')));
  t.is(unknownType.code, 415);
  t.is(unknownType.message, 'the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json');
  const deleted = await core.deleteNamespacedSecret({ name: 'tls', namespace: ns });
  t.is((deleted as unknown as Status).status, 'Success', 'a deleted Secret answers with a Status, not the object');

  const cm = await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'settings' }, data: { a: '1' }, binaryData: { b: 'Ag==' } } });
  const cmPatched = await core.patchNamespacedConfigMap({ name: 'settings', namespace: ns, body: [{ op: 'add', path: '/data/c', value: '3' }] }, jsonPatch);
  t.deepEqual(cmPatched.data, { a: '1', c: '3' });
  t.truthy(cm.metadata?.uid);
  const dup = await failure(t, core.replaceNamespacedConfigMap({ name: 'settings', namespace: ns, body: { ...cmPatched, data: { b: 'clash' } } }));
  t.regex(dup.message, /data\[b\]: Invalid value: "b": duplicate of key present in binaryData/);
  await core.deleteNamespacedConfigMap({ name: 'settings', namespace: ns });
  await failure(t, core.readNamespacedConfigMap({ name: 'settings', namespace: ns }));

  const renewTime = new Date('2030-01-02T03:04:05.678Z');
  const lease = await leases.createNamespacedLease({ namespace: ns, body: { metadata: { name: 'tunnel-server' }, spec: { holderIdentity: 'pod-a', leaseDurationSeconds: 15, renewTime } } });
  // client-node types MicroTime fields as V1MicroTime but hands back the server's string.
  t.is(typeof lease.spec?.renewTime, 'string');
  t.is(String(lease.spec?.renewTime), '2030-01-02T03:04:05.678000Z', 'MicroTime: microseconds, as the server writes it');
  const taken = await leases.replaceNamespacedLease({ name: 'tunnel-server', namespace: ns, body: { ...lease, spec: { ...lease.spec, holderIdentity: 'pod-b', leaseTransitions: 1 } } });
  t.is(taken.spec?.holderIdentity, 'pod-b');
  const raced = await failure(t, leases.replaceNamespacedLease({ name: 'tunnel-server', namespace: ns, body: { ...lease, spec: { ...lease.spec, holderIdentity: 'pod-c' } } }));
  t.is(raced.message, 'Operation cannot be fulfilled on leases.coordination.k8s.io "tunnel-server": the object has been modified; please apply your changes to the latest version and try again');
  const zero = await failure(t, leases.patchNamespacedLease({ name: 'tunnel-server', namespace: ns, body: { spec: { leaseDurationSeconds: 0 } } }, setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch)));
  t.is(zero.message, 'Lease.coordination.k8s.io "tunnel-server" is invalid: spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0');
  await leases.deleteNamespacedLease({ name: 'tunnel-server', namespace: ns });
  t.is(shared.objects.get('coordination.k8s.io', 'leases', 'tunnel-server', ns), undefined);
});

test('strategic merge patch merges conditions by type on types that declare it, and replaces lists that do not', async (t) => {
  const core = admin.makeApiClient(CoreV1Api);
  const node = unique('node');
  await core.createNode({ body: { metadata: { name: node }, status: { conditions: [{ type: 'Ready', status: 'False' }, { type: 'MemoryPressure', status: 'False' }] } } });
  const strategic = setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch);
  const patched = await core.patchNodeStatus({ name: node, body: { status: { conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady' }] } } }, strategic);
  t.deepEqual(patched.status?.conditions?.map((c) => `${c.type}=${c.status}`), ['Ready=True', 'MemoryPressure=False']);
  const csrs = admin.makeApiClient(CertificatesV1Api);
  const name = unique('smp');
  await csrs.createCertificateSigningRequest({ body: csrBody(name) });
  await csrs.patchCertificateSigningRequestApproval({ name, body: { status: { conditions: [{ type: 'Approved', status: 'True', reason: 'A', message: '' }] } } }, strategic);
  const denied = await failure(t, csrs.patchCertificateSigningRequestApproval({ name, body: { status: { conditions: [{ type: 'Denied', status: 'True', reason: 'B', message: '' }] } } }, strategic));
  t.is(denied.message, `CertificateSigningRequest.certificates.k8s.io "${name}" is invalid: status.conditions: Forbidden: updates may not remove a condition of type "Approved"`, 'CSR conditions have no merge key: the patch replaces the list');
});

// ---- custom resources --------------------------------------------------------------------------

test('a registered custom resource: created, listed by a selectable field, kind kept in lists, PUT needs resourceVersion, no strategic merge', async (t) => {
  const double = await startKubeApi();
  try {
    double.addToken('t', { username: 'admin', groups: ['system:masters'] });
    double.registerResource(CLUSTER_CREDENTIALS);
    const custom = config(double, { token: 't' }).makeApiClient(CustomObjectsApi);
    const where = { group: 'platform.tkestack.io', version: 'v1', plural: 'clustercredentials' };
    for (const [cluster, tenant] of [['cls-a', 'default'], ['cls-b', 'default'], ['cls-c', 'other']]) {
      await custom.createClusterCustomObject({ ...where, body: { apiVersion: 'platform.tkestack.io/v1', kind: 'ClusterCredential', metadata: { generateName: 'cc-' }, clusterName: cluster, tenantID: tenant, token: 'abc' } });
    }
    const byCluster = await custom.listClusterCustomObject({ ...where, fieldSelector: 'clusterName=cls-b' }) as { kind: string; items: Array<{ kind: string; clusterName: string; metadata: { name: string; resourceVersion: string; generation: number } }> };
    t.is(byCluster.kind, 'ClusterCredentialList');
    t.is(byCluster.items.length, 1);
    t.is(byCluster.items[0].kind, 'ClusterCredential', 'custom resource lists keep kind');
    t.regex(byCluster.items[0].metadata.name, /^cc-[a-z0-9]{5}$/);
    t.is(byCluster.items[0].metadata.generation, 1);
    const byTenant = await custom.listClusterCustomObject({ ...where, fieldSelector: 'tenantID=default,clusterName!=cls-a' }) as { items: unknown[] };
    t.is(byTenant.items.length, 1);
    const notSelectable = await failure(t, custom.listClusterCustomObject({ ...where, fieldSelector: 'token=abc' }));
    t.is(notSelectable.message, 'field label not supported: token');
    const clusterScoped = await failure(t, custom.listClusterCustomObject({ ...where, fieldSelector: 'metadata.namespace=default' }));
    t.is(clusterScoped.message, 'field label not supported: metadata.namespace');

    const item = byCluster.items[0];
    const name = item.metadata.name;
    const noVersion = await failure(t, custom.replaceClusterCustomObject({ ...where, name, body: { ...item, metadata: { name }, token: 'def' } }));
    t.is(noVersion.code, 422);
    t.is(noVersion.message, `clustercredentials.platform.tkestack.io "${name}" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update`);
    const replaced = await custom.replaceClusterCustomObject({ ...where, name, body: { ...item, token: 'def' } }) as { metadata: { generation: number } };
    t.is(replaced.metadata.generation, 2, 'a change outside metadata bumps generation');
    const strategic = await failure(t, custom.patchClusterCustomObject({ ...where, name, body: { token: 'x' } }, setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch)));
    t.is(strategic.code, 415);
    t.is(strategic.message, 'the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json');
    const merged = await custom.patchClusterCustomObject({ ...where, name, body: { token: 'ghi' } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch)) as { token: string };
    t.is(merged.token, 'ghi');
    const deleted = await custom.deleteClusterCustomObject({ ...where, name }) as { kind: string };
    t.is(deleted.kind, 'ClusterCredential', 'a deleted custom resource answers with the object');
  } finally {
    await double.close();
  }
});

// ---- lifecycle ---------------------------------------------------------------------------------

test('stop() refuses connections and ends watches; start() listens on the same port with the state kept', async (t) => {
  const double = await startKubeApi();
  try {
    double.addToken('t', { username: 'admin', groups: ['system:masters'] });
    const kc = config(double, { token: 't' });
    const core = kc.makeApiClient(CoreV1Api);
    const ns = await namespace(kc);
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'kept' }, data: { a: '1' } } });
    let ended = false;
    await new Watch(kc).watch(`/api/v1/namespaces/${ns}/configmaps`, {}, () => undefined, () => { ended = true; });
    const url = double.url;
    await double.stop();
    await eventually(() => ended, 'the watch to end');
    // client-node rejects with node-fetch's FetchError (code ECONNREFUSED), which is not an Error instance.
    const refused: unknown = await core.readNamespacedConfigMap({ name: 'kept', namespace: ns }).then(() => 'answered', (err: unknown) => err);
    t.like(refused, { code: 'ECONNREFUSED' });
    await double.start();
    t.is(double.url, url);
    const kept = await core.readNamespacedConfigMap({ name: 'kept', namespace: ns });
    t.deepEqual(kept.data, { a: '1' });
  } finally {
    await double.close();
  }
});

test('objects gives direct access that still versions objects and notifies watches; namespace deletion empties the namespace first', async (t) => {
  const core = admin.makeApiClient(CoreV1Api);
  const ns = await namespace();
  const events: string[] = [];
  await new Watch(admin).watch(`/api/v1/namespaces/${ns}/secrets`, {}, (type, o: KubernetesObject) => events.push(`${type} ${o.metadata?.name}`), () => undefined);
  const put = shared.objects.put('', 'secrets', { metadata: { name: 'seeded', namespace: ns }, data: { k: 'dg==' } });
  t.regex(String((put.metadata as { uid: string }).uid), /^[0-9a-f-]{36}$/);
  t.is((await core.readNamespacedSecret({ name: 'seeded', namespace: ns })).data?.k, 'dg==');
  await eventually(() => events.includes('ADDED seeded'), 'the watch to see the seeded secret');
  t.deepEqual(shared.objects.list('', 'serviceaccounts', ns).map((o) => (o.metadata as { name: string }).name), ['default'], 'every namespace gets a default ServiceAccount');
  const deleting = await core.deleteNamespace({ name: ns });
  t.is((deleting as { status?: { phase?: string } }).status?.phase, 'Terminating');
  await eventually(() => shared.objects.get('', 'namespaces', ns) === undefined, 'the namespace to go');
  await eventually(() => events.includes('DELETED seeded'), 'the watch to see the secret go with its namespace');
  t.is(shared.objects.get('', 'secrets', 'seeded', ns), undefined);
});

// ---- the controller-manager signer stand-in ----------------------------------------------------

test('the signer stand-in issues kube-apiserver-client certificates that authenticate, refuses server auth, and system:masters is refused at admission', async (t) => {
  const csrs = admin.makeApiClient(CertificatesV1Api);
  const user = unique('tunnel-agent');
  const { pem, key } = csrPem({ cn: user, organizations: ['tunnel:agents'] });
  const name = unique('client');
  await csrs.createCertificateSigningRequest({ body: csrBody(name, { request: Buffer.from(pem).toString('base64'), signerName: CLIENT_SIGNER, usages: ['digital signature', 'client auth'], expirationSeconds: 3600 }) });
  const current = await csrs.readCertificateSigningRequest({ name });
  await csrs.replaceCertificateSigningRequestApproval({ name, body: approved(current) });
  const certificate = await eventually(async () => (await csrs.readCertificateSigningRequest({ name })).status?.certificate, 'the certificate to be issued');
  const certPem = Buffer.from(certificate, 'base64').toString();
  const cert = new X509Certificate(certPem);
  t.true(cert.checkIssued(new X509Certificate(shared.clientCaPem)));
  t.is(cert.subject, `O=tunnel:agents\nCN=${user}`);
  const lifetime = new Date(cert.validTo).getTime() - new Date(cert.validFrom).getTime();
  t.true(Math.abs(lifetime - (3600 + 300) * 1000) < 2000, 'a short certificate is backdated 5 minutes at the start only');

  shared.grant({ group: 'tunnel:agents' }, [{ verbs: ['list'], apiGroups: [''], resources: ['namespaces'] }]);
  const asAgent = config(shared, { cert: certPem, key: key.export({ type: 'pkcs8', format: 'pem' }) as string });
  t.true((await asAgent.makeApiClient(CoreV1Api).listNamespace()).items.length > 0);
  t.true(shared.requests.some((r) => r.user === user && r.path.startsWith('/api/v1/namespaces') && r.status === 200));

  const serving = unique('serving');
  await csrs.createCertificateSigningRequest({ body: csrBody(serving, { signerName: CLIENT_SIGNER, usages: ['digital signature', 'server auth'] }) });
  await csrs.replaceCertificateSigningRequestApproval({ name: serving, body: approved(await csrs.readCertificateSigningRequest({ name: serving })) });
  type Conditions = { status?: { conditions?: Array<{ type: string; reason: string; message: string }> } };
  const failedCondition = await eventually(() => (shared.objects.get(CSR_GROUP, 'certificatesigningrequests', serving) as Conditions | undefined)?.status?.conditions?.find((c) => c.type === 'Failed'), 'the Failed condition');
  t.is(failedCondition.reason, 'SignerValidationFailure');
  t.is(failedCondition.message, 'invalid usage for client certificate: server auth');

  const masters = unique('masters');
  const refused = await failure(t, csrs.createCertificateSigningRequest({ body: csrBody(masters, { request: Buffer.from(csrPem({ cn: 'root', organizations: ['system:masters'] }).pem).toString('base64'), signerName: CLIENT_SIGNER }) }));
  t.is(refused.code, 403);
  t.is(refused.message, `certificatesigningrequests.certificates.k8s.io "${masters}" is forbidden: use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed`);
});

// ---- kubectl -----------------------------------------------------------------------------------

test('kubectl get csr, certificate approve, create configmap, get secrets -n, get pods -A, get clustercredentials and create token work against the double', async (t) => {
  if (!existsSync(KUBECTL)) {
    t.log(`kubectl is not installed at ${KUBECTL}: nothing to run it against`);
    t.pass();
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'kube-api-kubectl-'));
  try {
    const kubeconfig = join(dir, 'config');
    writeFileSync(kubeconfig, shared.kubeconfig({ token: 'admin-token' }));
    const kubectl = async (...args: string[]) => (await execFileAsync(KUBECTL, ['--kubeconfig', kubeconfig, ...args], { env: { ...process.env, HOME: dir } })).stdout;
    const name = unique('kubectl');
    await admin.makeApiClient(CertificatesV1Api).createCertificateSigningRequest({ body: csrBody(name) });
    const pending = await kubectl('get', 'csr', name);
    t.regex(pending, new RegExp(`^NAME\\s+AGE\\s+SIGNERNAME\\s+REQUESTOR\\s+REQUESTEDDURATION\\s+CONDITION\\n${name}\\s+\\S+\\s+${CUSTOM_SIGNER}\\s+admin\\s+<none>\\s+Pending\\n$`));
    t.is(await kubectl('certificate', 'approve', name), `certificatesigningrequest.certificates.k8s.io/${name} approved\n`);
    const csr = await admin.makeApiClient(CertificatesV1Api).readCertificateSigningRequest({ name });
    t.like(csr.status?.conditions?.[0], { type: 'Approved', status: 'True', reason: 'KubectlApprove', message: 'This CSR was approved by kubectl certificate approve.' });
    t.regex(await kubectl('get', 'csr', name), /\sApproved\n$/);

    const ns = await namespace();
    await admin.makeApiClient(CoreV1Api).createNamespacedSecret({ namespace: ns, body: { metadata: { name: 'agent-token' }, type: 'example.com/token', stringData: { token: 't' } } });
    t.is(await kubectl('create', 'configmap', 'agent-config', `--from-literal=cluster=${ns}`, '-n', ns), 'configmap/agent-config created\n');
    t.deepEqual((await admin.makeApiClient(CoreV1Api).readNamespacedConfigMap({ name: 'agent-config', namespace: ns })).data, { cluster: ns });
    const secrets = await kubectl('get', 'secrets', '-n', ns);
    t.regex(secrets, /^NAME\s+TYPE\s+DATA\s+AGE\nagent-token\s+example\.com\/token\s+1\s+\S+\n$/);
    t.is(await kubectl('get', 'pods', '-A'), '', 'no pods: kubectl says so on stderr only');
    const credential = unique('cc');
    shared.objects.put('platform.tkestack.io', 'clustercredentials', { apiVersion: 'platform.tkestack.io/v1', kind: 'ClusterCredential', metadata: { name: credential }, clusterName: 'cls-x' });
    t.regex(await kubectl('get', 'clustercredentials', credential), new RegExp(`^NAME\\s+AGE\n${credential}\\s+\\S+\n$`));
    t.regex(await kubectl('get', 'cc', '-o', 'name'), new RegExp(`^clustercredential.platform.tkestack.io/${credential}$`, 'm'));
    await admin.makeApiClient(CoreV1Api).createNamespacedServiceAccount({ namespace: ns, body: { metadata: { name: 'agent' } } });
    const token = (await kubectl('create', 'token', 'agent', '-n', ns, '--audience', 'system:konnectivity-server')).trim();
    const review = await admin.makeApiClient(AuthenticationV1Api).createTokenReview({ body: { spec: { token, audiences: ['system:konnectivity-server'] } } });
    t.is(review.status?.user?.username, `system:serviceaccount:${ns}:agent`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
