/**
 * The non-core types: coordination.k8s.io/v1 Leases (MicroTime fields, duration rules), and
 * custom resources added with registerResource, which behave as the API server serves
 * CRD-backed types: unstructured objects that keep kind/apiVersion in lists, generation bumped
 * on spec changes, resourceVersion required on PUT, no strategic merge patch, and field
 * selectors limited to metadata.name (metadata.namespace when namespaced) and the declared
 * selectable fields.
 */
import { isObject, metadataOf, scalarText, valueAt, deepEqual, type JsonObject } from './json.js';
import { decodeError, normalizeTime } from './decode.js';
import { invalid, type FieldError } from './field-errors.js';
import { builtInType, metaFields, statusOnlyStrategy, ALL_VERBS } from './builtin-type.js';
import { badRequest } from './status.js';
import type { ResourceType, Strategy } from './resource-types.js';

export function leases(): ResourceType {
  return builtInType({
    group: 'coordination.k8s.io', version: 'v1', resource: 'leases', kind: 'Lease', singular: 'lease',
    allowCreateOnUpdate: true,
    strategy: {
      decode(lease) {
        for (const field of ['spec.acquireTime', 'spec.renewTime']) normalizeTime(lease, field, 'Lease', 'v1', true);
        const spec = lease.spec;
        if (spec !== undefined && spec !== null && !isObject(spec)) throw decodeError('Lease', 'v1', 'json: cannot unmarshal into Go struct field Lease.spec of type v1.LeaseSpec');
      },
      validate: validateLease,
      validateUpdate: validateLease,
    },
  });
}

function validateLease(lease: JsonObject): FieldError[] {
  const errors: FieldError[] = [];
  const duration = valueAt(lease, 'spec.leaseDurationSeconds');
  if (typeof duration === 'number' && duration <= 0) errors.push(invalid('spec.leaseDurationSeconds', duration, 'must be greater than 0'));
  const transitions = valueAt(lease, 'spec.leaseTransitions');
  if (typeof transitions === 'number' && transitions < 0) errors.push(invalid('spec.leaseTransitions', transitions, 'must be greater than or equal to 0'));
  return errors;
}

/** What registerResource takes. */
export interface CustomResourceDefinition {
  group: string;
  version: string;
  resource: string;
  kind: string;
  namespaced: boolean;
  shortNames?: string[];
  selectableFields?: string[];
  subresources?: string[];
}

/** The stored object without metadata and status: what counts as a spec change for generation. */
function specPart(object: JsonObject, hasStatus: boolean): JsonObject {
  const { metadata: _metadata, status, ...rest } = object;
  return hasStatus ? rest : { ...rest, status };
}

function customStrategy(hasStatus: boolean): Strategy {
  return {
    decode(object) {
      if (typeof object.kind !== 'string' || object.kind === '') throw badRequest(`Object 'Kind' is missing in '${JSON.stringify(object)}'`);
    },
    prepareForCreate(object) {
      if (hasStatus) delete object.status;
      metadataOf(object).generation = 1;
    },
    prepareForUpdate(object, old) {
      if (hasStatus) {
        if (old.status === undefined) delete object.status;
        else object.status = structuredClone(old.status);
      }
      const generation = valueAt(old, 'metadata.generation');
      const previous = typeof generation === 'number' ? generation : 1;
      metadataOf(object).generation = deepEqual(specPart(object, hasStatus), specPart(old, hasStatus)) ? previous : previous + 1;
    },
  };
}

export function customResource(def: CustomResourceDefinition): ResourceType {
  const selectable = def.selectableFields ?? [];
  const hasStatus = (def.subresources ?? []).includes('status');
  const singular = def.kind.toLowerCase();
  return {
    ...builtInType({
      group: def.group, version: def.version, resource: def.resource, kind: def.kind, singular, namespaced: def.namespaced,
      shortNames: def.shortNames ?? [], verbs: ALL_VERBS,
    }),
    custom: true,
    fieldLabels: { supported: ['metadata.name', ...(def.namespaced ? ['metadata.namespace'] : []), ...selectable], style: 'explicit' },
    fields: (object) => {
      const fields = metaFields(object, def.namespaced);
      for (const field of selectable) {
        const value = valueAt(object, field);
        fields[field] = typeof value === 'object' && value !== null ? JSON.stringify(value) : scalarText(value);
      }
      return fields;
    },
    strategy: customStrategy(hasStatus),
    subresources: hasStatus ? { status: statusOnlyStrategy() } : {},
    allowUnconditionalUpdate: false,
    returnDeletedObject: true,
    strategicSchema: undefined,
    hasStatus,
  };
}

