/**
 * The common shape of built-in resource types, so each type states only what differs from the
 * usual registry Store: namespaced, DNS-subdomain names, every verb, metadata.name and
 * metadata.namespace as its selectable fields, unconditional updates allowed.
 */
import { metaString, type JsonObject } from './json.js';
import type { ResourceType } from './resource-types.js';
import type { StrategicSchema } from './patch.js';

export const ALL_VERBS = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'];

/** Patch strategies every ObjectMeta has (finalizers merge as a set, ownerReferences by uid). */
export const METADATA_SCHEMA: StrategicSchema = {
  'metadata.finalizers': {},
  'metadata.ownerReferences': { mergeKey: 'uid' },
};

export function metaFields(object: JsonObject, namespaced: boolean): Record<string, string> {
  const fields: Record<string, string> = { 'metadata.name': metaString(object, 'name') };
  if (namespaced) fields['metadata.namespace'] = metaString(object, 'namespace');
  return fields;
}

type Required = Pick<ResourceType, 'group' | 'version' | 'resource' | 'kind' | 'singular'>;

export function builtInType(spec: Required & Partial<ResourceType>): ResourceType {
  const namespaced = spec.namespaced ?? true;
  return {
    namespaced,
    shortNames: [],
    categories: [],
    verbs: ALL_VERBS,
    custom: false,
    nameRule: 'subdomain',
    // metav1's default conversion accepts both even for cluster-scoped kinds.
    fieldLabels: { supported: ['metadata.name', 'metadata.namespace'], style: 'default' },
    fields: (object) => metaFields(object, namespaced),
    strategy: {},
    subresources: {},
    allowCreateOnUpdate: false,
    allowUnconditionalUpdate: true,
    returnDeletedObject: false,
    hasStatus: false,
    ...spec,
    strategicSchema: { ...METADATA_SCHEMA, ...(spec.strategicSchema ?? {}) },
  };
}

/** The usual /status strategy of a built-in: only status changes (spec and metadata stay as stored). */
export function statusOnlyStrategy(): ResourceType['strategy'] {
  return {
    prepareForUpdate(object, old) {
      const status = object.status;
      for (const key of Object.keys(object)) delete object[key];
      Object.assign(object, structuredClone(old));
      if (status === undefined) delete object.status;
      else object.status = status;
    },
  };
}
