/**
 * Discovery documents kubectl and client libraries read before anything else: /version,
 * /api (APIVersions), /apis (APIGroupList), /apis/<group> (APIGroup) and the APIResourceLists
 * of each group version, with verbs, scope, kind, short names, categories and subresources.
 * Only the legacy (unaggregated) form is served; kubectl falls back to it when the aggregated
 * discovery it asks for first comes back as plain application/json.
 */
import type { JsonObject } from './json.js';
import { apiVersionOf, type ResourceType } from './resource-types.js';

/** The version this double answers /version with. */
export const SERVER_VERSION = { major: '1', minor: '32', gitVersion: 'v1.32.0' };

/** Endpoints that are not stored types: subresources with their own kind, and create-only reviews. */
export interface ExtraResource {
  group: string;
  version: string;
  entry: JsonObject;
}

/** Subresources whose requests carry the parent's kind, and their verbs. */
const SUBRESOURCE_VERBS: Record<string, string[]> = {
  status: ['get', 'patch', 'update'],
  approval: ['get', 'patch', 'update'],
};

export function versionInfo(): JsonObject {
  return {
    ...SERVER_VERSION,
    gitCommit: '0000000000000000000000000000000000000000',
    gitTreeState: 'clean',
    buildDate: '2024-12-11T17:58:14Z',
    goVersion: 'go1.23.3',
    compiler: 'gc',
    platform: 'linux/amd64',
  };
}

export function apiVersions(serverAddress: string): JsonObject {
  return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress }] };
}

function groupVersions(types: ResourceType[], extras: ExtraResource[]): Map<string, Set<string>> {
  const groups = new Map<string, Set<string>>();
  for (const { group, version } of [...types, ...extras]) {
    if (group === '') continue;
    const versions = groups.get(group) ?? new Set<string>();
    versions.add(version);
    groups.set(group, versions);
  }
  return groups;
}

function apiGroup(name: string, versions: Set<string>): JsonObject {
  const list = [...versions].map((version) => ({ groupVersion: `${name}/${version}`, version }));
  return { name, versions: list, preferredVersion: list[0] };
}

export function apiGroupList(types: ResourceType[], extras: ExtraResource[]): JsonObject {
  const groups = [...groupVersions(types, extras).entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, versions]) => apiGroup(name, versions));
  return { kind: 'APIGroupList', apiVersion: 'v1', groups };
}

export function apiGroupDocument(types: ResourceType[], extras: ExtraResource[], group: string): JsonObject | undefined {
  const versions = groupVersions(types, extras).get(group);
  if (!versions) return undefined;
  return { kind: 'APIGroup', apiVersion: 'v1', ...apiGroup(group, versions) };
}

/** The APIResourceList of a group version, or undefined when nothing is served there. */
export function apiResourceList(types: ResourceType[], extras: ExtraResource[], group: string, version: string): JsonObject | undefined {
  const served = types.filter((t) => t.group === group && t.version === version);
  const extra = extras.filter((e) => e.group === group && e.version === version);
  if (served.length === 0 && extra.length === 0) return undefined;
  const resources: JsonObject[] = [];
  for (const type of served.sort((a, b) => a.resource.localeCompare(b.resource))) {
    const entry: JsonObject = { name: type.resource, singularName: type.singular, namespaced: type.namespaced, kind: type.kind, verbs: type.verbs };
    if (type.shortNames.length > 0) entry.shortNames = type.shortNames;
    if (type.categories.length > 0) entry.categories = type.categories;
    resources.push(entry);
    for (const sub of Object.keys(type.subresources).sort()) {
      resources.push({ name: `${type.resource}/${sub}`, singularName: '', namespaced: type.namespaced, kind: type.kind, verbs: SUBRESOURCE_VERBS[sub] ?? ['get', 'patch', 'update'] });
    }
  }
  resources.push(...extra.map((e) => e.entry));
  const list: JsonObject = { kind: 'APIResourceList', groupVersion: group === '' ? version : `${group}/${version}`, resources };
  // The core list has no apiVersion; the group lists do.
  return group === '' ? list : { kind: 'APIResourceList', apiVersion: 'v1', groupVersion: apiVersionOf({ group, version }), resources };
}
