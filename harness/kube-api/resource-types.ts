/**
 * What the double knows about each resource type: names for discovery, scope, the verbs it
 * serves, selectable fields, and the registry strategy (defaults, validation, and how each
 * update path treats an incoming object), mirroring a kube-apiserver registry Store.
 */
import type { JsonObject } from './json.js';
import type { FieldError } from './field-errors.js';
import type { NameRule } from './object-meta.js';
import type { StrategicSchema } from './patch.js';
import type { UserInfo } from './user.js';
import type { ObjectStore } from './store.js';
import type { ApiError } from './status.js';

/** What a strategy may consult: who asks, when, and the stored objects. */
export interface StrategyContext {
  user: UserInfo;
  now: Date;
  store: ObjectStore;
}

/** A registry strategy for one endpoint (the object, or a subresource such as /status). */
export interface Strategy {
  /** Checks that JSON decoding into the Go type would do (base64 []byte fields, times); throws a 400 ApiError. */
  decode?(object: JsonObject): void;
  /** SetDefaults_*: fills defaults on every object read from a request. */
  defaults?(object: JsonObject): void;
  prepareForCreate?(object: JsonObject, ctx: StrategyContext): void;
  validate?(object: JsonObject, ctx: StrategyContext): FieldError[];
  prepareForUpdate?(object: JsonObject, old: JsonObject, ctx: StrategyContext): void;
  validateUpdate?(object: JsonObject, old: JsonObject, ctx: StrategyContext): FieldError[];
  /** Normalizes what is stored (e.g. timestamps to the server's precision). */
  canonicalize?(object: JsonObject): void;
}

/** Admission that runs after validation (validating admission plugins). */
export interface Admission {
  validateCreate?(object: JsonObject, ctx: StrategyContext): ApiError | undefined;
  validateUpdate?(object: JsonObject, old: JsonObject, subresource: string, ctx: StrategyContext): ApiError | undefined;
}

/** Which field selectors a kind accepts and how it refuses others (explicit conversion funcs vs. the metav1 default). */
export interface FieldLabels {
  supported: string[];
  /** 'explicit': "field label not supported: X"; 'default': "\"X\" is not a known field selector: only ..." */
  style: 'explicit' | 'default';
}

export interface ResourceType {
  group: string;
  version: string;
  resource: string;
  kind: string;
  singular: string;
  namespaced: boolean;
  shortNames: string[];
  categories: string[];
  /** Verbs served on the collection and objects (discovery lists them). */
  verbs: string[];
  /** Custom resources (registerResource) keep kind/apiVersion in lists, refuse strategic merge and need resourceVersion on PUT. */
  custom: boolean;
  nameRule: NameRule;
  fieldLabels: FieldLabels;
  /** The selectable field values of an object (label -> value). */
  fields(object: JsonObject): Record<string, string>;
  strategy: Strategy;
  /** Update strategies of subresources that take a whole object (status, approval). */
  subresources: Record<string, Strategy>;
  admission?: Admission;
  allowCreateOnUpdate: boolean;
  allowUnconditionalUpdate: boolean;
  returnDeletedObject: boolean;
  /** List strategies for strategic merge patch; undefined means the type refuses it (415). */
  strategicSchema?: StrategicSchema;
  /** Whether the type has a /status subresource, so the main endpoint leaves status alone. */
  hasStatus: boolean;
}

export function apiVersionOf(type: Pick<ResourceType, 'group' | 'version'>): string {
  return type.group === '' ? type.version : `${type.group}/${type.version}`;
}

export function typeKey(group: string, resource: string): string {
  return `${group}/${resource}`;
}
