/**
 * The generic registry Store: get, list, create, update, patch and delete for any resource
 * type, in the order kube-apiserver runs them (decode, namespace checks, strategy defaults and
 * preparation, validation, admission, then storage with optimistic concurrency), so that every
 * type answers with the same errors in the same cases as the real server.
 */
import {
  canonicalOrder, clone, deepEqual, isObject, metadataOf, metaString, scalarText, stringArray, valueAt, type JsonObject,
} from './json.js';
import { ObjectStore, objectKey } from './store.js';
import { fillSystemFields, generateName, validateObjectMeta, validateObjectMetaUpdate } from './object-meta.js';
import { GoUint, invalid } from './field-errors.js';
import {
  ApiError, alreadyExists, badRequest, conflict, expired, forbiddenError, invalidObject, notFound, tooLargeResourceVersion,
  unknownServerError, unsupportedMediaType, type GroupResource,
} from './status.js';
import { JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, applyJsonPatch, applyMergePatch, applyStrategicMergePatch } from './patch.js';
import { Selection } from './selection.js';
import { apiVersionOf, typeKey, type ResourceType, type Strategy, type StrategyContext } from './resource-types.js';
import { formatTime } from './time.js';
import { normalizeTime } from './decode.js';

/** Attempts at a fresh generated name when one is taken (names.SimpleNameGenerator retries). */
const GENERATE_NAME_ATTEMPTS = 8;
/** How long a read at a resourceVersion the server has not reached waits for it (the cacher's 3 s). */
const FUTURE_REVISION_WAIT_MS = 3000;
const FUTURE_REVISION_POLL_MS = 25;
const CONTINUE_VERSION = 'meta.k8s.io/v1';
const EXPIRED_LIST = 'The resourceVersion for the provided list is too old.';
const EXPIRED_CONTINUE = 'The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.';

export interface DeleteOptions {
  gracePeriodSeconds?: number;
  orphanDependents?: boolean;
  preconditions?: { uid?: string; resourceVersion?: string };
}

export interface DeleteResult {
  code: number;
  body: JsonObject;
}

export function groupResource(type: ResourceType): GroupResource {
  return { group: type.group, resource: type.resource };
}

export class Registry {
  private readonly types = new Map<string, ResourceType>();

  constructor(readonly store: ObjectStore) {}

  register(type: ResourceType): void {
    this.types.set(typeKey(type.group, type.resource), type);
    this.store.register(typeKey(type.group, type.resource));
  }

  find(group: string, resource: string): ResourceType | undefined {
    return this.types.get(typeKey(group, resource));
  }

  findServed(group: string, version: string, resource: string): ResourceType | undefined {
    const type = this.find(group, resource);
    return type && type.version === version ? type : undefined;
  }

  all(): ResourceType[] {
    return [...this.types.values()];
  }

  key(type: ResourceType): string {
    return typeKey(type.group, type.resource);
  }

  get(type: ResourceType, namespace: string, name: string): JsonObject {
    const object = this.store.get(this.key(type), type.namespaced ? namespace : '', name);
    if (!object) throw notFound(groupResource(type), name);
    return canonicalOrder(object);
  }

  /** A typed list: items in key order, at the resourceVersion semantics of the query. */
  async list(type: ResourceType, namespace: string | undefined, params: URLSearchParams, selection: Selection): Promise<JsonObject> {
    const continueToken = params.get('continue') ?? '';
    const rvParam = params.get('resourceVersion') ?? '';
    const match = params.get('resourceVersionMatch') ?? '';
    validateListOptions(rvParam, match, continueToken);
    const limit = parseLimit(params.get('limit'));
    const key = this.key(type);
    let revision = this.store.currentRevision;
    let start = '';
    let items: JsonObject[];
    if (continueToken !== '') {
      const token = decodeContinue(continueToken);
      const at = this.store.listAt(key, token.rv, namespace);
      if (!Array.isArray(at)) throw expired(EXPIRED_CONTINUE);
      items = at;
      revision = token.rv;
      start = token.start;
    } else if (rvParam !== '' && rvParam !== '0') {
      const requested = parseRevision(rvParam);
      await this.waitForRevision(requested);
      if (match === 'Exact') {
        const at = this.store.listAt(key, requested, namespace);
        if (!Array.isArray(at)) throw expired(EXPIRED_LIST);
        items = at;
        revision = requested;
      } else {
        items = this.store.list(key, namespace);
      }
    } else {
      items = this.store.list(key, namespace);
    }
    const keyOf = (o: JsonObject) => objectKey(metaString(o, 'namespace'), metaString(o, 'name'));
    const selected = items.filter((o) => (start === '' || keyOf(o) >= start) && selection.matches(o));
    const page = limit > 0 ? selected.slice(0, limit) : selected;
    const metadata: JsonObject = { resourceVersion: String(revision) };
    if (limit > 0 && selected.length > limit) {
      metadata.continue = encodeContinue(revision, `${keyOf(page[page.length - 1])}\u0000`);
      if (selection.isEverything) metadata.remainingItemCount = selected.length - limit;
    }
    return this.typedList(type, page, metadata);
  }

  typedList(type: ResourceType, items: JsonObject[], metadata: JsonObject): JsonObject {
    return {
      kind: `${type.kind}List`,
      apiVersion: apiVersionOf(type),
      metadata,
      items: items.map((item) => {
        const ordered = canonicalOrder(item);
        if (!type.custom) {
          delete ordered.kind;
          delete ordered.apiVersion;
        }
        return ordered;
      }),
    };
  }

  /** Waits, as the watch cache does, for a revision the server has not reached yet; 504 after 3 s. */
  async waitForRevision(revision: number): Promise<void> {
    const deadline = Date.now() + FUTURE_REVISION_WAIT_MS;
    while (revision > this.store.currentRevision) {
      if (Date.now() >= deadline) throw tooLargeResourceVersion(revision, this.store.currentRevision);
      await new Promise((resolve) => setTimeout(resolve, FUTURE_REVISION_POLL_MS));
    }
  }

  /** POST: returns the stored object. */
  create(type: ResourceType, namespace: string, body: unknown, ctx: StrategyContext): JsonObject {
    const object = this.decode(type, body);
    this.ensureNamespace(type, namespace, object);
    this.admitNamespace(type, namespace, object);
    return this.createDecoded(type, object, ctx, false);
  }

  private createDecoded(type: ResourceType, object: JsonObject, ctx: StrategyContext, fromUpdate: boolean): JsonObject {
    const metadata = metadataOf(object);
    const rv = metadata.resourceVersion;
    if (fromUpdate) delete metadata.resourceVersion;
    type.strategy.prepareForCreate?.(object, ctx);
    fillSystemFields(metadata, ctx.now);
    const generated = metaString(object, 'name') === '' && metaString(object, 'generateName') !== '';
    if (generated) metadata.name = generateName(metaString(object, 'generateName'));
    const errors = [
      ...(type.strategy.validate?.(object, ctx) ?? []),
      ...validateObjectMeta(object, type.namespaced, type.nameRule, !type.custom),
    ];
    if (errors.length > 0) throw invalidObject(type.group, type.kind, metaString(object, 'name'), errors);
    const denied = type.admission?.validateCreate?.(object, ctx);
    if (denied) throw denied;
    if (!fromUpdate && rv !== undefined && rv !== '' && rv !== null) throw unknownServerError('resourceVersion should not be set on objects to be created');
    type.strategy.canonicalize?.(object);
    const key = this.key(type);
    const namespace = metaString(object, 'namespace');
    for (let attempt = 0; this.store.get(key, namespace, metaString(object, 'name')); attempt++) {
      if (!generated || attempt >= GENERATE_NAME_ATTEMPTS) throw alreadyExists(groupResource(type), metaString(object, 'name'));
      metadata.name = generateName(metaString(object, 'generateName'));
    }
    return canonicalOrder(this.store.create(key, object));
  }

  /** PUT on the object or a subresource. `created` tells 201 from 200. */
  update(type: ResourceType, namespace: string, name: string, body: unknown, subresource: string, ctx: StrategyContext): { object: JsonObject; created: boolean } {
    const object = this.decode(type, body, subresource);
    checkName(type, object, namespace, name);
    const existing = this.store.get(this.key(type), type.namespaced ? namespace : '', name);
    if (!existing) {
      if (subresource !== '' || !type.allowCreateOnUpdate) throw notFound(groupResource(type), name);
      this.admitNamespace(type, namespace, object);
      return { object: this.createDecoded(type, object, ctx, true), created: true };
    }
    return { object: this.updateExisting(type, object, existing, subresource, ctx), created: false };
  }

  /** PATCH: the patch applies to the stored object, which then goes through update. */
  patch(type: ResourceType, namespace: string, name: string, contentType: string, patchText: string, subresource: string, ctx: StrategyContext): JsonObject {
    const accepted = [JSON_PATCH, MERGE_PATCH, ...(type.strategicSchema ? [STRATEGIC_MERGE_PATCH] : [])];
    if (!accepted.includes(contentType)) throw unsupportedMediaType(accepted);
    const existing = this.store.get(this.key(type), type.namespaced ? namespace : '', name);
    if (!existing) throw notFound(groupResource(type), name);
    let patched: JsonObject;
    if (contentType === JSON_PATCH) patched = applyJsonPatch(existing, patchText);
    else if (contentType === MERGE_PATCH) patched = applyMergePatch(existing, patchText);
    else patched = applyStrategicMergePatch(existing, patchText, type.strategicSchema ?? {});
    const object = this.decode(type, patched, subresource);
    checkName(type, object, namespace, name);
    return this.updateExisting(type, object, existing, subresource, ctx);
  }

  private updateExisting(type: ResourceType, object: JsonObject, existing: JsonObject, subresource: string, ctx: StrategyContext): JsonObject {
    const gr = groupResource(type);
    const name = metaString(existing, 'name');
    const metadata = metadataOf(object);
    const rv = metaString(object, 'resourceVersion');
    if (rv === '') {
      if (!type.allowUnconditionalUpdate) {
        throw invalidObject(type.group, type.resource, name, [invalid('metadata.resourceVersion', new GoUint(0), 'must be specified for an update')]);
      }
      metadata.resourceVersion = metaString(existing, 'resourceVersion');
    } else if (rv !== metaString(existing, 'resourceVersion')) {
      throw conflict(gr, name);
    }
    const strategy: Strategy = subresource === '' ? type.strategy : type.subresources[subresource];
    beforeUpdate(metadata, existing);
    strategy.prepareForUpdate?.(object, existing, ctx);
    const errors = [
      ...validateObjectMeta(object, type.namespaced, null, !type.custom),
      ...validateObjectMetaUpdate(object, existing),
      ...(strategy.validateUpdate?.(object, existing, ctx) ?? []),
    ];
    if (errors.length > 0) throw invalidObject(type.group, type.kind, name, errors);
    const denied = type.admission?.validateUpdate?.(object, existing, subresource, ctx);
    if (denied) throw denied;
    type.strategy.canonicalize?.(object);
    const key = this.key(type);
    if (sameExceptVersion(object, existing)) return canonicalOrder(existing);
    const stored = this.store.update(key, object);
    // The last finalizer of an object being deleted is gone: the store writes the update, then deletes.
    const finalizers = [...stringArray(valueAt(stored, 'metadata.finalizers')), ...(isNamespace(type) ? stringArray(valueAt(stored, 'spec.finalizers')) : [])];
    if (metaString(stored, 'deletionTimestamp') !== '' && finalizers.length === 0) {
      this.store.delete(key, metaString(stored, 'namespace'), name);
    }
    return canonicalOrder(stored);
  }

  /** DELETE of one object: Status or the object, as the type's store returns it. */
  delete(type: ResourceType, namespace: string, name: string, options: DeleteOptions, ctx: StrategyContext): DeleteResult {
    const gr = groupResource(type);
    const key = this.key(type);
    const ns = type.namespaced ? namespace : '';
    const existing = this.store.get(key, ns, name);
    if (!existing) throw notFound(gr, name);
    checkPreconditions(gr, existing, options);
    const pendingCode = options.orphanDependents === false ? 202 : 200;
    if (isNamespace(type)) {
      // The first delete only starts termination; the namespace controller empties the namespace, then finalizes it away.
      if (metaString(existing, 'deletionTimestamp') === '') {
        const marked = clone(existing);
        metadataOf(marked).deletionTimestamp = formatTime(ctx.now);
        metadataOf(marked).deletionGracePeriodSeconds = 0;
        marked.status = { ...(isObject(marked.status) ? marked.status : {}), phase: 'Terminating' };
        return { code: pendingCode, body: canonicalOrder(this.store.update(key, marked)) };
      }
      if (stringArray(valueAt(existing, 'spec.finalizers')).length > 0) return { code: pendingCode, body: canonicalOrder(existing) };
    }
    const finalizers = stringArray(valueAt(existing, 'metadata.finalizers'));
    const gracePeriod = this.gracePeriod(type, existing, options);
    if (finalizers.length > 0 || gracePeriod > 0) {
      if (metaString(existing, 'deletionTimestamp') !== '') return { code: pendingCode, body: canonicalOrder(existing) };
      const marked = clone(existing);
      const metadata = metadataOf(marked);
      metadata.deletionTimestamp = formatTime(new Date(ctx.now.getTime() + gracePeriod * 1000));
      metadata.deletionGracePeriodSeconds = gracePeriod;
      return { code: pendingCode, body: canonicalOrder(this.store.update(key, marked)) };
    }
    const deleted = this.store.delete(key, ns, name) ?? existing;
    if (type.returnDeletedObject) return { code: 200, body: canonicalOrder(deleted) };
    const details: JsonObject = { name, kind: type.resource, uid: metaString(deleted, 'uid') };
    if (type.group !== '') details.group = type.group;
    return { code: 200, body: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details } };
  }

  /** Pods bound to a node wait for their kubelet for the grace period; everything else goes at once. */
  private gracePeriod(type: ResourceType, object: JsonObject, options: DeleteOptions): number {
    if (type.group !== '' || type.resource !== 'pods') return 0;
    const phase = valueAt(object, 'status.phase');
    if (metaString(object, 'deletionTimestamp') !== '' || valueAt(object, 'spec.nodeName') === undefined || phase === 'Succeeded' || phase === 'Failed') return 0;
    const fromSpec = valueAt(object, 'spec.terminationGracePeriodSeconds');
    return options.gracePeriodSeconds ?? (typeof fromSpec === 'number' ? fromSpec : 30);
  }

  /** DELETE on a collection: every selected object goes through delete; the answer lists them. */
  deleteCollection(type: ResourceType, namespace: string | undefined, selection: Selection, options: DeleteOptions, ctx: StrategyContext): JsonObject {
    const deleted: JsonObject[] = [];
    for (const object of this.store.list(this.key(type), namespace)) {
      if (!selection.matches(object)) continue;
      try {
        const result = this.delete(type, metaString(object, 'namespace'), metaString(object, 'name'), options, ctx);
        deleted.push(result.body.kind === 'Status' ? object : result.body);
      } catch (err) {
        if (!(err instanceof ApiError && err.code === 404)) throw err;
      }
    }
    return this.typedList(type, deleted, {});
  }

  /** Reads a request body as the type: kind/apiVersion must match when given; decoding checks and defaults run. */
  decode(type: ResourceType, body: unknown, subresource = ''): JsonObject {
    if (!isObject(body)) throw badRequest(`the object provided is unrecognized (must be of type ${type.kind}): couldn't get version/kind; json parse error: cannot unmarshal ${Array.isArray(body) ? 'array' : typeof body} into Go value of type struct`);
    const object = clone(body);
    const expectedVersion = apiVersionOf(type);
    if (object.apiVersion !== undefined && object.apiVersion !== '' && object.apiVersion !== expectedVersion) {
      throw badRequest(`the API version in the data (${scalarText(object.apiVersion)}) does not match the expected API version (${expectedVersion})`);
    }
    if (object.kind !== undefined && object.kind !== '' && object.kind !== type.kind) {
      throw badRequest(`${scalarText(object.kind)} in version "${type.version}" cannot be handled as a ${type.kind}: no kind "${scalarText(object.kind)}" is registered for version "${expectedVersion}"`);
    }
    const strategy = subresource === '' ? type.strategy : type.subresources[subresource] ?? type.strategy;
    if (object.metadata !== undefined && object.metadata !== null && !isObject(object.metadata)) {
      throw badRequest(`${type.kind} in version "${type.version}" cannot be handled as a ${type.kind}: json: cannot unmarshal ${typeof object.metadata} into Go struct field ${type.kind}.metadata of type v1.ObjectMeta`);
    }
    for (const field of ['metadata.creationTimestamp', 'metadata.deletionTimestamp']) normalizeTime(object, field, type.kind, type.version);
    (strategy.decode ?? type.strategy.decode)?.(object);
    object.kind = type.kind;
    object.apiVersion = expectedVersion;
    type.strategy.defaults?.(object);
    return object;
  }

  private ensureNamespace(type: ResourceType, namespace: string, object: JsonObject): void {
    const metadata = metadataOf(object);
    const own = metaString(object, 'namespace');
    const expected = type.namespaced ? namespace : '';
    if (own === expected) return;
    if (own === '') metadata.namespace = expected;
    else if (expected === '') delete metadata.namespace;
    else throw badRequest('the namespace of the provided object does not match the namespace sent on the request');
  }

  /** NamespaceLifecycle: content goes only into namespaces that exist and are not terminating. */
  private admitNamespace(type: ResourceType, namespace: string, object: JsonObject): void {
    if (!type.namespaced) return;
    const ns = this.store.get(typeKey('', 'namespaces'), '', namespace);
    if (!ns) throw notFound({ group: '', resource: 'namespaces' }, namespace);
    if (valueAt(ns, 'status.phase') === 'Terminating') {
      const why = `unable to create new content in namespace ${namespace} because it is being terminated`;
      throw forbiddenError(groupResource(type), metaString(object, 'name'), why, [{ reason: 'NamespaceTerminating', message: `namespace ${namespace} is being terminated`, field: 'metadata.namespace' }]);
    }
  }

  /**
   * Writes an object without a request (test setup): read and defaulted as a request body
   * would be, system fields filled, but no strategy, validation or admission.
   */
  put(type: ResourceType, object: JsonObject, now: Date): JsonObject {
    const copy = this.decode(type, { ...object, kind: type.kind, apiVersion: apiVersionOf(type) });
    const metadata = metadataOf(copy);
    if (!type.namespaced) delete metadata.namespace;
    if (metaString(copy, 'name') === '' && metaString(copy, 'generateName') !== '') metadata.name = generateName(metaString(copy, 'generateName'));
    if (metaString(copy, 'name') === '') throw new Error(`objects.put: a ${type.kind} needs metadata.name or metadata.generateName`);
    const key = this.key(type);
    const existing = this.store.get(key, metaString(copy, 'namespace'), metaString(copy, 'name'));
    if (existing) {
      metadata.uid ??= valueAt(existing, 'metadata.uid');
      metadata.creationTimestamp ??= valueAt(existing, 'metadata.creationTimestamp');
      type.strategy.canonicalize?.(copy);
      return canonicalOrder(this.store.update(key, copy));
    }
    const uid = metadata.uid;
    const created = metadata.creationTimestamp;
    fillSystemFields(metadata, now);
    if (typeof uid === 'string' && uid !== '') metadata.uid = uid;
    if (typeof created === 'string' && created !== '') metadata.creationTimestamp = created;
    delete metadata.resourceVersion;
    type.strategy.canonicalize?.(copy);
    return canonicalOrder(this.store.create(key, copy));
  }
}

function isNamespace(type: ResourceType): boolean {
  return type.group === '' && type.resource === 'namespaces';
}

/**
 * rest.BeforeUpdate's metadata rules: creationTimestamp and a set deletionTimestamp always stay
 * as stored, uid and the grace period when the client leaves them out; generation is the
 * server's (a strategy may bump it).
 */
function beforeUpdate(metadata: JsonObject, existing: JsonObject): void {
  const old = metadataOf(clone(existing));
  if (old.creationTimestamp !== undefined) metadata.creationTimestamp = old.creationTimestamp;
  if (old.deletionTimestamp !== undefined) metadata.deletionTimestamp = old.deletionTimestamp;
  for (const field of ['uid', 'deletionGracePeriodSeconds']) {
    if ((metadata[field] === undefined || metadata[field] === '' || metadata[field] === null) && old[field] !== undefined) metadata[field] = old[field];
  }
  if (old.generation === undefined) delete metadata.generation;
  else metadata.generation = old.generation;
}

function checkName(type: ResourceType, object: JsonObject, namespace: string, name: string): void {
  const own = metaString(object, 'name');
  if (own !== name) throw badRequest(`the name of the object (${own}) does not match the name on the URL (${name})`);
  const ownNamespace = metaString(object, 'namespace');
  if (type.namespaced) {
    if (ownNamespace !== '' && ownNamespace !== namespace) throw badRequest(`the namespace of the object (${ownNamespace}) does not match the namespace on the URL (${namespace})`);
    metadataOf(object).namespace = namespace;
  } else {
    delete metadataOf(object).namespace;
  }
}

function checkPreconditions(gr: GroupResource, existing: JsonObject, options: DeleteOptions): void {
  const { uid, resourceVersion } = options.preconditions ?? {};
  if (uid && uid !== metaString(existing, 'uid')) {
    throw conflict(gr, metaString(existing, 'name'), `Precondition failed: UID in precondition: ${uid}, UID in object meta: ${metaString(existing, 'uid')}`);
  }
  if (resourceVersion && resourceVersion !== metaString(existing, 'resourceVersion')) {
    throw conflict(gr, metaString(existing, 'name'), `Precondition failed: ResourceVersion in precondition: ${resourceVersion}, ResourceVersion in object meta: ${metaString(existing, 'resourceVersion')}`);
  }
}

/** etcd's GuaranteedUpdate writes nothing (and bumps no resourceVersion) when the bytes would not change. */
function sameExceptVersion(a: JsonObject, b: JsonObject): boolean {
  const strip = (o: JsonObject) => {
    const c = clone(o);
    delete metadataOf(c).resourceVersion;
    return c;
  };
  return deepEqual(strip(a), strip(b));
}

/** ValidateListOptions: resourceVersionMatch needs a resourceVersion; continue excludes one. */
function validateListOptions(rv: string, match: string, continueToken: string): void {
  const listOptions = (field: string, detail: string) => invalidObject('meta.k8s.io', 'ListOptions', '', [{ type: 'FieldValueForbidden', field, detail }]);
  if (match !== '' && match !== 'Exact' && match !== 'NotOlderThan') {
    throw invalidObject('meta.k8s.io', 'ListOptions', '', [{ type: 'FieldValueNotSupported', field: 'resourceVersionMatch', badValue: match, detail: 'supported values: "Exact", "NotOlderThan", ""' }]);
  }
  if (match !== '' && rv === '') throw listOptions('resourceVersionMatch', 'resourceVersionMatch is forbidden unless resourceVersion is provided');
  if (match === 'Exact' && rv === '0') throw listOptions('resourceVersionMatch', 'resourceVersionMatch "exact" is forbidden for resourceVersion "0"');
  if (continueToken !== '' && match !== '') throw listOptions('resourceVersionMatch', 'resourceVersionMatch is forbidden when continue is provided');
  if (continueToken !== '' && rv !== '' && rv !== '0') throw listOptions('resourceVersion', 'specifying resource version is not allowed when using continue');
}

export function parseRevision(text: string): number {
  if (!/^\d+$/.test(text)) throw badRequest(`resourceVersion: Invalid value: "${text}": strconv.ParseUint: parsing "${text}": invalid syntax`);
  return Number(text);
}

function parseLimit(text: string | null): number {
  if (text === null || text === '') return 0;
  const n = Number(text);
  return Number.isInteger(n) && n > 0 ? n : 0;
}

function encodeContinue(rv: number, start: string): string {
  return Buffer.from(JSON.stringify({ v: CONTINUE_VERSION, rv, start })).toString('base64url');
}

function decodeContinue(token: string): { rv: number; start: string } {
  try {
    const parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as unknown;
    if (isObject(parsed) && parsed.v === CONTINUE_VERSION && typeof parsed.rv === 'number' && typeof parsed.start === 'string') return { rv: parsed.rv, start: parsed.start };
  } catch {
    // Falls through to the 400 below.
  }
  throw badRequest(`continue key is not valid: incorrect encoded start resourceVersion (version ${CONTINUE_VERSION})`);
}
