/**
 * Plain-JSON helpers for API objects: the double keeps every object as the JSON a client sent
 * (after the server's own changes), so these are the only operations it needs on them.
 */
import { isDeepStrictEqual } from 'node:util';

/** An API object, or any JSON object inside one. */
export type JsonObject = Record<string, unknown>;

/** Metadata keys in the order the API server serializes ObjectMeta. */
const METADATA_ORDER = [
  'name', 'generateName', 'namespace', 'selfLink', 'uid', 'resourceVersion', 'generation', 'creationTimestamp',
  'deletionTimestamp', 'deletionGracePeriodSeconds', 'labels', 'annotations', 'ownerReferences', 'finalizers', 'managedFields',
];

export function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function clone<T>(value: T): T {
  return structuredClone(value);
}

export function deepEqual(a: unknown, b: unknown): boolean {
  return isDeepStrictEqual(a, b);
}

/** The object's metadata, created empty when missing (or not an object). */
export function metadataOf(object: JsonObject): JsonObject {
  const metadata = object.metadata;
  if (isObject(metadata)) return metadata;
  const created: JsonObject = {};
  object.metadata = created;
  return created;
}

/** A string field of metadata, or '' (the API's zero value). */
export function metaString(object: JsonObject, key: string): string {
  const value = isObject(object.metadata) ? object.metadata[key] : undefined;
  return typeof value === 'string' ? value : '';
}

/** The string map at metadata[key] (labels, annotations), empty when absent. */
export function metaStringMap(object: JsonObject, key: string): Record<string, string> {
  const value = isObject(object.metadata) ? object.metadata[key] : undefined;
  if (!isObject(value)) return {};
  const result: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) if (typeof v === 'string') result[k] = v;
  return result;
}

/** The value at a dot path (e.g. spec.signerName), or undefined. */
export function valueAt(object: unknown, path: string): unknown {
  let current: unknown = object;
  for (const part of path.split('.')) {
    if (!isObject(current)) return undefined;
    current = current[part];
  }
  return current;
}

/** The object at object[key], created when missing. */
export function childObject(object: JsonObject, key: string): JsonObject {
  const value = object[key];
  if (isObject(value)) return value;
  const created: JsonObject = {};
  object[key] = created;
  return created;
}

/** A scalar as text (what Go's %v prints for it); '' for anything else. */
export function scalarText(value: unknown): string {
  return typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean' ? String(value) : '';
}

export function stringArray(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : [];
}

/**
 * The object with keys in the API server's order: kind and apiVersion first, then metadata
 * (its own keys ordered as ObjectMeta is), then the rest as stored. JSON clients do not care,
 * people reading a response do.
 */
export function canonicalOrder(object: JsonObject): JsonObject {
  const ordered: JsonObject = {};
  if ('kind' in object) ordered.kind = object.kind;
  if ('apiVersion' in object) ordered.apiVersion = object.apiVersion;
  if (isObject(object.metadata)) {
    const metadata: JsonObject = {};
    for (const key of METADATA_ORDER) if (key in object.metadata) metadata[key] = object.metadata[key];
    for (const [key, value] of Object.entries(object.metadata)) if (!(key in metadata)) metadata[key] = value;
    ordered.metadata = metadata;
  } else if ('metadata' in object) {
    ordered.metadata = object.metadata;
  }
  for (const [key, value] of Object.entries(object)) if (!(key in ordered)) ordered[key] = value;
  return ordered;
}
