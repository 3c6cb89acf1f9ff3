/**
 * The three patch formats the API server applies to an object's JSON: RFC 6902 JSON patch
 * (with `test`), RFC 7396 merge patch, and strategic merge patch for built-in types, where a
 * list either merges by a key (conditions by type, containers by name), merges as a set
 * (finalizers) or, without a patch strategy, is replaced whole.
 */
import { clone, deepEqual, isObject, type JsonObject } from './json.js';
import { ApiError, badRequest } from './status.js';

export const JSON_PATCH = 'application/json-patch+json';
export const MERGE_PATCH = 'application/merge-patch+json';
export const STRATEGIC_MERGE_PATCH = 'application/strategic-merge-patch+json';
export const APPLY_PATCH = 'application/apply-patch+yaml';

/** apiserver's maxJSONPatchOperations. */
const MAX_JSON_PATCH_OPERATIONS = 10_000;
/** What the generic 422 of a JSON patch that does not apply says (NewGenericServerResponse drops the detail). */
const REJECTED_MESSAGE = 'the server rejected our request due to an error in our request';

/** How strategic merge treats a list at a path: merge items by a key, merge as a set, or (absent) replace. */
export interface ListStrategy {
  mergeKey?: string;
}

/** List strategies of a kind by dotted path; `[]` stands for "each item of the list", e.g. spec.containers[].env. */
export type StrategicSchema = Record<string, ListStrategy>;

/** A JSON patch that does not apply: 422 with the generic message the real server sends. */
function patchRejected(): ApiError {
  return new ApiError(422, 'Invalid', REJECTED_MESSAGE, {});
}

export function applyJsonPatch(document: JsonObject, patchText: string): JsonObject {
  let operations: unknown;
  try {
    operations = JSON.parse(patchText) as unknown;
  } catch (err) {
    throw badRequest(`invalid character in JSON patch: ${(err as Error).message}`);
  }
  if (!Array.isArray(operations)) throw badRequest('json: cannot unmarshal object into Go value of type jsonpatch.Patch');
  if (operations.length > MAX_JSON_PATCH_OPERATIONS) {
    throw new ApiError(413, 'RequestEntityTooLarge', `Request entity too large: The allowed maximum operations in a JSON patch is ${MAX_JSON_PATCH_OPERATIONS}, got ${operations.length}`);
  }
  let result: unknown = clone(document);
  for (const operation of operations) {
    if (!isObject(operation) || typeof operation.op !== 'string' || typeof operation.path !== 'string') throw patchRejected();
    result = applyOperation(result, operation);
  }
  if (!isObject(result)) throw patchRejected();
  return result;
}

function applyOperation(document: unknown, operation: JsonObject): unknown {
  const path = parsePointer(operation.path as string);
  switch (operation.op) {
    case 'add':
      requireValue(operation);
      return setAt(document, path, clone(operation.value), 'add');
    case 'replace':
      requireValue(operation);
      if (!exists(document, path)) throw patchRejected();
      return setAt(document, path, clone(operation.value), 'replace');
    case 'remove':
      if (!exists(document, path)) throw patchRejected();
      return removeAt(document, path);
    case 'test':
      requireValue(operation);
      if (!exists(document, path) || !deepEqual(getAt(document, path), operation.value)) throw patchRejected();
      return document;
    case 'move':
    case 'copy': {
      if (typeof operation.from !== 'string') throw patchRejected();
      const from = parsePointer(operation.from);
      if (!exists(document, from)) throw patchRejected();
      const value = clone(getAt(document, from));
      const source = operation.op === 'move' ? removeAt(document, from) : document;
      return setAt(source, path, value, 'add');
    }
    default:
      throw patchRejected();
  }
}

function requireValue(operation: JsonObject): void {
  if (!('value' in operation)) throw patchRejected();
}

function parsePointer(pointer: string): string[] {
  if (pointer === '') return [];
  if (!pointer.startsWith('/')) throw patchRejected();
  return pointer.slice(1).split('/').map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function exists(document: unknown, path: string[]): boolean {
  let current = document;
  for (const part of path) {
    if (Array.isArray(current)) {
      const i = arrayIndex(part, current.length - 1);
      if (i === undefined) return false;
      current = current[i];
    } else if (isObject(current)) {
      if (!Object.hasOwn(current, part)) return false;
      current = current[part];
    } else {
      return false;
    }
  }
  return true;
}

function getAt(document: unknown, path: string[]): unknown {
  let current = document;
  for (const part of path) current = Array.isArray(current) ? current[Number(part)] : (current as JsonObject)[part];
  return current;
}

function arrayIndex(part: string, max: number): number | undefined {
  if (!/^(0|[1-9]\d*)$/.test(part)) return undefined;
  const i = Number(part);
  return i <= max ? i : undefined;
}

function setAt(document: unknown, path: string[], value: unknown, mode: 'add' | 'replace'): unknown {
  if (path.length === 0) return value;
  const parent = getParent(document, path);
  const last = path[path.length - 1];
  if (Array.isArray(parent)) {
    if (mode === 'add') {
      const i = last === '-' ? parent.length : arrayIndex(last, parent.length);
      if (i === undefined) throw patchRejected();
      parent.splice(i, 0, value);
    } else {
      const i = arrayIndex(last, parent.length - 1);
      if (i === undefined) throw patchRejected();
      parent[i] = value;
    }
  } else {
    parent[last] = value;
  }
  return document;
}

function removeAt(document: unknown, path: string[]): unknown {
  if (path.length === 0) throw patchRejected();
  const parent = getParent(document, path);
  const last = path[path.length - 1];
  if (Array.isArray(parent)) parent.splice(Number(last), 1);
  else delete parent[last];
  return document;
}

function getParent(document: unknown, path: string[]): JsonObject | unknown[] {
  const parentPath = path.slice(0, -1);
  if (!exists(document, parentPath)) throw patchRejected();
  const parent = getAt(document, parentPath);
  if (!Array.isArray(parent) && !isObject(parent)) throw patchRejected();
  return parent;
}

function parsePatchObject(patchText: string): JsonObject {
  let patch: unknown;
  try {
    patch = JSON.parse(patchText) as unknown;
  } catch {
    throw badRequest('Invalid JSON Patch');
  }
  if (!isObject(patch)) throw badRequest('Invalid JSON Patch');
  return patch;
}

/** RFC 7396: objects merge, null deletes, anything else (lists included) replaces. */
export function applyMergePatch(document: JsonObject, patchText: string): JsonObject {
  return mergeObjects(clone(document), parsePatchObject(patchText));
}

function mergeObjects(target: JsonObject, patch: JsonObject): JsonObject {
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete target[key];
    else if (isObject(value)) target[key] = mergeObjects(isObject(target[key]) ? target[key] : {}, value);
    else target[key] = clone(value);
  }
  return target;
}

/** Strategic merge patch with the kind's list strategies; directives $patch, $retainKeys, $deleteFromPrimitiveList and $setElementOrder. */
export function applyStrategicMergePatch(document: JsonObject, patchText: string, schema: StrategicSchema): JsonObject {
  return strategicMergeMap(clone(document), parsePatchObject(patchText), '', schema);
}

const DELETE_FROM_PRIMITIVE_LIST = '$deleteFromPrimitiveList/';
const SET_ELEMENT_ORDER = '$setElementOrder/';

function strategicMergeMap(target: JsonObject, patch: JsonObject, path: string, schema: StrategicSchema): JsonObject {
  const directive = patch.$patch;
  if (directive === 'replace') {
    const replaced = clone(patch);
    delete replaced.$patch;
    return replaced;
  }
  if (directive === 'delete') return {};
  if (Array.isArray(patch.$retainKeys)) {
    const keep = new Set(patch.$retainKeys.filter((k): k is string => typeof k === 'string'));
    for (const key of Object.keys(target)) if (!keep.has(key) && !(key in patch)) delete target[key];
  }
  for (const [key, value] of Object.entries(patch)) {
    if (key === '$patch' || key === '$retainKeys' || key.startsWith(SET_ELEMENT_ORDER)) continue;
    if (key.startsWith(DELETE_FROM_PRIMITIVE_LIST)) {
      const field = key.slice(DELETE_FROM_PRIMITIVE_LIST.length);
      const current = target[field];
      if (Array.isArray(current) && Array.isArray(value)) target[field] = current.filter((item) => !value.some((v) => deepEqual(v, item)));
      continue;
    }
    const childPath = path === '' ? key : `${path}.${key}`;
    if (value === null) {
      delete target[key];
    } else if (isObject(value)) {
      target[key] = strategicMergeMap(isObject(target[key]) ? target[key] : {}, value, childPath, schema);
    } else if (Array.isArray(value)) {
      target[key] = mergeList(Array.isArray(target[key]) ? target[key] : [], value, childPath, schema);
    } else {
      target[key] = value;
    }
  }
  return target;
}

function mergeList(current: unknown[], patch: unknown[], path: string, schema: StrategicSchema): unknown[] {
  const strategy = schema[path];
  if (patch.some((item) => isObject(item) && item.$patch === 'replace')) {
    return patch.filter((item) => !(isObject(item) && item.$patch === 'replace')).map((item) => clone(item));
  }
  if (!strategy) return clone(patch);
  const { mergeKey } = strategy;
  if (mergeKey === undefined) {
    const merged = [...current];
    for (const item of patch) if (!merged.some((m) => deepEqual(m, item))) merged.push(clone(item));
    return merged;
  }
  const merged = [...current];
  for (const item of patch) {
    if (!isObject(item)) {
      merged.push(clone(item));
      continue;
    }
    const at = merged.findIndex((m) => isObject(m) && deepEqual(m[mergeKey], item[mergeKey]));
    if (item.$patch === 'delete') {
      if (at >= 0) merged.splice(at, 1);
    } else if (at >= 0) {
      merged[at] = strategicMergeMap(merged[at] as JsonObject, item, `${path}[]`, schema);
    } else {
      const added = clone(item);
      delete added.$patch;
      merged.push(added);
    }
  }
  return merged;
}
