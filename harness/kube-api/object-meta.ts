/**
 * ObjectMeta on the server side: the system fields it fills on create (uid, creationTimestamp,
 * a generated name), and the validation every object goes through (apimachinery's
 * ValidateObjectMeta and ValidateObjectMetaUpdate).
 */
import { randomInt, randomUUID } from 'node:crypto';
import { isObject, metaString, metaStringMap, stringArray, type JsonObject } from './json.js';
import { formatTime } from './time.js';
import { forbidden, invalid, key as keyPath, required, tooLong, type FieldError } from './field-errors.js';
import { isDns1035Label, isDns1123Label, isDns1123Subdomain, isQualifiedName, isValidLabelValue } from './name-validation.js';

/** names.SimpleNameGenerator: 5 characters from utilrand's alphabet (no vowels, no 0/1/3). */
const GENERATED_SUFFIX_LENGTH = 5;
const GENERATED_SUFFIX_ALPHABET = 'bcdfghjklmnpqrstvwxz2456789';
/** maxGeneratedNameLength: a generated name must still fit a DNS label. */
const MAX_GENERATE_NAME_PREFIX = 63 - GENERATED_SUFFIX_LENGTH;
const TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024;
/** Finalizers that need no domain prefix on built-in types. */
const STANDARD_FINALIZERS = new Set(['kubernetes', 'orphan', 'foregroundDeletion']);

/** How a resource's names are checked; null when any name goes (CSRs: "We don't care what you call your certificate requests"). */
export type NameRule = 'subdomain' | 'label' | 'dns1035' | null;

export function generateName(prefix: string): string {
  const base = prefix.length > MAX_GENERATE_NAME_PREFIX ? prefix.slice(0, MAX_GENERATE_NAME_PREFIX) : prefix;
  let suffix = '';
  for (let i = 0; i < GENERATED_SUFFIX_LENGTH; i++) suffix += GENERATED_SUFFIX_ALPHABET[randomInt(GENERATED_SUFFIX_ALPHABET.length)];
  return base + suffix;
}

/** rest.FillObjectMetaSystemFields: a fresh uid and creationTimestamp, whatever the client sent. */
export function fillSystemFields(metadata: JsonObject, now: Date): void {
  metadata.uid = randomUUID();
  metadata.creationTimestamp = formatTime(now);
  delete metadata.deletionTimestamp;
  delete metadata.deletionGracePeriodSeconds;
  delete metadata.selfLink;
}

function checkName(rule: NameRule, name: string, prefix: boolean): string[] {
  if (rule === null) return [];
  // A generateName prefix may end in '-', the suffix makes it valid (maskTrailingDash).
  const value = prefix && name.endsWith('-') ? `${name.slice(0, -1)}a` : name;
  switch (rule) {
    case 'subdomain':
      return isDns1123Subdomain(value);
    case 'label':
      return isDns1123Label(value);
    case 'dns1035':
      return isDns1035Label(value);
  }
}

/** ValidateObjectMeta for an object about to be created or updated. */
export function validateObjectMeta(object: JsonObject, namespaced: boolean, rule: NameRule, builtIn: boolean): FieldError[] {
  const errors: FieldError[] = [];
  const name = metaString(object, 'name');
  const generate = metaString(object, 'generateName');
  if (generate !== '') for (const msg of checkName(rule, generate, true)) errors.push(invalid('metadata.generateName', generate, msg));
  if (name === '') errors.push(required('metadata.name', 'name or generateName is required'));
  else for (const msg of checkName(rule, name, false)) errors.push(invalid('metadata.name', name, msg));
  const namespace = metaString(object, 'namespace');
  if (namespaced) {
    if (namespace === '') errors.push(required('metadata.namespace'));
    else for (const msg of isDns1123Label(namespace)) errors.push(invalid('metadata.namespace', namespace, msg));
  } else if (namespace !== '') {
    errors.push(forbidden('metadata.namespace', 'not allowed on this type'));
  }
  errors.push(...validateLabels(object), ...validateAnnotations(object), ...validateFinalizers(object, builtIn));
  return errors;
}

function validateLabels(object: JsonObject): FieldError[] {
  const errors: FieldError[] = [];
  for (const [k, v] of Object.entries(metaStringMap(object, 'labels'))) {
    for (const msg of isQualifiedName(k)) errors.push(invalid('metadata.labels', k, msg));
    for (const msg of isValidLabelValue(v)) errors.push(invalid('metadata.labels', v, msg));
  }
  return errors;
}

function validateAnnotations(object: JsonObject): FieldError[] {
  const errors: FieldError[] = [];
  let size = 0;
  for (const [k, v] of Object.entries(metaStringMap(object, 'annotations'))) {
    for (const msg of isQualifiedName(k.toLowerCase())) errors.push(invalid('metadata.annotations', k, msg));
    size += k.length + v.length;
  }
  if (size > TOTAL_ANNOTATION_SIZE_LIMIT) errors.push(tooLong('metadata.annotations', TOTAL_ANNOTATION_SIZE_LIMIT));
  return errors;
}

function validateFinalizers(object: JsonObject, builtIn: boolean): FieldError[] {
  const errors: FieldError[] = [];
  const finalizers = isObject(object.metadata) ? stringArray(object.metadata.finalizers) : [];
  for (const finalizer of finalizers) {
    const messages = isQualifiedName(finalizer);
    for (const msg of messages) errors.push(invalid('metadata.finalizers', finalizer, msg));
    if (messages.length === 0 && builtIn && !finalizer.includes('/') && !STANDARD_FINALIZERS.has(finalizer)) {
      errors.push(invalid('metadata.finalizers', finalizer, 'name is neither a standard finalizer name nor is it fully qualified'));
    }
  }
  return errors;
}

/** ValidateObjectMetaUpdate: identity fields are immutable, and a deleted object takes no new finalizers. */
export function validateObjectMetaUpdate(object: JsonObject, old: JsonObject): FieldError[] {
  const errors: FieldError[] = [];
  for (const field of ['name', 'namespace', 'uid', 'creationTimestamp', 'deletionTimestamp']) {
    const now = metaString(object, field);
    if (now !== metaString(old, field)) errors.push(invalid(`metadata.${field}`, now, 'field is immutable'));
  }
  if (metaString(old, 'deletionTimestamp') !== '') {
    const before = new Set(isObject(old.metadata) ? stringArray(old.metadata.finalizers) : []);
    const added = (isObject(object.metadata) ? stringArray(object.metadata.finalizers) : []).filter((f) => !before.has(f));
    for (const f of added) errors.push(forbidden(keyPath('metadata.finalizers', f), 'no new finalizers can be added if the object is being deleted'));
  }
  errors.push(...validateLabels(object), ...validateAnnotations(object));
  return errors;
}
