/**
 * The two authentication endpoints that store nothing: TokenRequest (POST
 * /api/v1/namespaces/{ns}/serviceaccounts/{name}/token) issues a ServiceAccount token, and
 * TokenReview (POST /apis/authentication.k8s.io/v1/tokenreviews) says who a token belongs to
 * and for which of the asked audiences it is valid.
 */
import { isObject, metaString, scalarText, stringArray, valueAt, type JsonObject } from './json.js';
import { invalid, type FieldError } from './field-errors.js';
import { badRequest, conflict, invalidObject, notFound } from './status.js';
import { typeKey } from './resource-types.js';
import { formatTime } from './time.js';
import { API_AUDIENCES, BINDABLE_KINDS, type BoundObject, type ServiceAccountTokens } from './service-account-tokens.js';
import type { Authenticator } from './auth.js';
import type { ExtraResource } from './discovery.js';
import type { ObjectStore } from './store.js';

const AUTH_GROUP = 'authentication.k8s.io';
const AUTH_VERSION = 'v1';
const AUTH_API_VERSION = `${AUTH_GROUP}/${AUTH_VERSION}`;
const DEFAULT_EXPIRATION_SECONDS = 3600;
const MIN_EXPIRATION_SECONDS = 600;
const MAX_EXPIRATION_SECONDS = 2 ** 32;

export const TOKEN_DISCOVERY: ExtraResource[] = [
  {
    group: '', version: 'v1',
    entry: { name: 'serviceaccounts/token', singularName: '', namespaced: true, group: AUTH_GROUP, version: AUTH_VERSION, kind: 'TokenRequest', verbs: ['create'] },
  },
  {
    group: AUTH_GROUP, version: AUTH_VERSION,
    entry: { name: 'tokenreviews', singularName: 'tokenreview', namespaced: false, kind: 'TokenReview', verbs: ['create'] },
  },
];

function checkKind(body: JsonObject, kind: string): void {
  if (body.apiVersion !== undefined && body.apiVersion !== AUTH_API_VERSION) {
    throw badRequest(`the API version in the data (${scalarText(body.apiVersion)}) does not match the expected API version (${AUTH_API_VERSION})`);
  }
  if (body.kind !== undefined && body.kind !== kind) throw badRequest(`${scalarText(body.kind)} in version "${AUTH_VERSION}" cannot be handled as a ${kind}`);
}

export function tokenRequest(body: unknown, namespace: string, name: string, store: ObjectStore, tokens: ServiceAccountTokens, now: Date): JsonObject {
  if (!isObject(body)) throw badRequest('the object provided is unrecognized (must be of type TokenRequest)');
  checkKind(body, 'TokenRequest');
  const invalidRequest = (errors: FieldError[]) => invalidObject(AUTH_GROUP, 'TokenRequest', name, errors);
  const ownName = metaString(body, 'name');
  if (ownName !== '' && ownName !== name) throw invalidRequest([invalid('metadata.name', ownName, 'must match the service account name if specified')]);
  const ownNamespace = metaString(body, 'namespace');
  if (ownNamespace !== '' && ownNamespace !== namespace) throw invalidRequest([invalid('metadata.namespace', ownNamespace, 'must match the service account namespace if specified')]);
  const serviceAccount = store.get(typeKey('', 'serviceaccounts'), namespace, name);
  if (!serviceAccount) throw notFound({ group: '', resource: 'serviceaccounts' }, name);

  const spec = isObject(body.spec) ? body.spec : {};
  const audiences = stringArray(spec.audiences);
  const effectiveAudiences = audiences.length > 0 ? audiences : [...API_AUDIENCES];
  const expiration = typeof spec.expirationSeconds === 'number' ? spec.expirationSeconds : DEFAULT_EXPIRATION_SECONDS;
  const errors: FieldError[] = [];
  if (expiration < MIN_EXPIRATION_SECONDS) errors.push(invalid('spec.expirationSeconds', expiration, 'may not specify a duration less than 10 minutes'));
  if (expiration > MAX_EXPIRATION_SECONDS) errors.push(invalid('spec.expirationSeconds', expiration, 'may not specify a duration larger than 2^32 seconds'));
  if (errors.length > 0) throw invalidRequest(errors);

  const bound = boundObject(spec.boundObjectRef, namespace, name, store);
  const issued = tokens.issue(serviceAccount, effectiveAudiences, expiration, bound, now);
  return {
    kind: 'TokenRequest',
    apiVersion: AUTH_API_VERSION,
    metadata: { name, namespace, creationTimestamp: null },
    spec: { audiences: effectiveAudiences, expirationSeconds: expiration, boundObjectRef: isObject(spec.boundObjectRef) ? spec.boundObjectRef : null },
    status: { token: issued.token, expirationTimestamp: formatTime(issued.expires) },
  };
}

/** The object a token is bound to, checked as the TokenRequest REST checks it. */
function boundObject(ref: unknown, namespace: string, serviceAccount: string, store: ObjectStore): BoundObject | undefined {
  if (!isObject(ref)) return undefined;
  const kind = typeof ref.kind === 'string' ? ref.kind : '';
  const apiVersion = typeof ref.apiVersion === 'string' ? ref.apiVersion : 'v1';
  const resource = BINDABLE_KINDS[kind];
  if (!resource || apiVersion !== 'v1') throw badRequest(`cannot bind token to object of type ${apiVersion}, Kind=${kind}`);
  const name = typeof ref.name === 'string' ? ref.name : '';
  const object = store.get(typeKey('', resource), resource === 'nodes' ? '' : namespace, name);
  if (!object) throw notFound({ group: '', resource }, name);
  if (kind === 'Pod' && valueAt(object, 'spec.serviceAccountName') !== serviceAccount) {
    throw badRequest(`cannot bind token for serviceaccount "${serviceAccount}" to pod running with different serviceaccount name.`);
  }
  const uid = metaString(object, 'uid');
  if (typeof ref.uid === 'string' && ref.uid !== '' && ref.uid !== uid) {
    throw conflict({ group: '', resource: kind }, name, `the UID in the bound object reference (${ref.uid}) does not match the UID in record. The object might have been deleted and then recreated`);
  }
  return { kind, name, uid };
}

export function tokenReview(body: unknown, namespace: string, authenticator: Authenticator, now: Date): JsonObject {
  if (!isObject(body)) throw badRequest('the object provided is unrecognized (must be of type TokenReview)');
  checkKind(body, 'TokenReview');
  if (namespace !== '') throw badRequest(`namespace is not allowed on this type: ${namespace}`);
  const spec = isObject(body.spec) ? body.spec : {};
  const token = typeof spec.token === 'string' ? spec.token : '';
  if (token === '') throw badRequest('token is required for TokenReview in authentication');
  const requested = stringArray(spec.audiences);
  const audiences = requested.length > 0 ? requested : [...API_AUDIENCES];
  const result = authenticator.authenticateToken(token, audiences, now);
  const status: JsonObject = { user: {} };
  if (result.authenticated) status.authenticated = true;
  if (result.error) status.error = result.error;
  if (result.user) {
    const user: JsonObject = { username: result.user.username };
    if (result.user.uid) user.uid = result.user.uid;
    if (result.user.groups && result.user.groups.length > 0) user.groups = result.user.groups;
    user.extra = result.user.extra ?? {};
    if (Object.keys(user.extra as JsonObject).length === 0) delete user.extra;
    status.user = user;
    status.audiences = result.audiences ?? [];
  }
  const metadata = isObject(body.metadata) ? body.metadata : {};
  return { kind: 'TokenReview', apiVersion: AUTH_API_VERSION, metadata: { ...metadata, creationTimestamp: null }, spec, status };
}
