/**
 * The part of OpenAPI v3 that kubectl needs before it writes: /openapi/v3 lists a document per
 * group version, and each document has, per object path, a PATCH operation tagged with its
 * group/version/kind and the fieldValidation query parameter. From that kubectl concludes
 * that the server validates fields itself (so create -f and replace -f send
 * fieldValidation=Strict instead of downloading schemas). No schemas are served: kubectl
 * explain and client-side apply, which need them, do not work against the double.
 */
import { createHash } from 'node:crypto';
import type { JsonObject } from './json.js';
import { SERVER_VERSION } from './discovery.js';
import type { ResourceType } from './resource-types.js';

/** The document path of a group version: api/v1 or apis/<group>/<version>. */
function documentPath(group: string, version: string): string {
  return group === '' ? `api/${version}` : `apis/${group}/${version}`;
}

function groupVersions(types: ResourceType[]): Array<{ group: string; version: string }> {
  const seen = new Map<string, { group: string; version: string }>();
  for (const { group, version } of types) seen.set(documentPath(group, version), { group, version });
  return [...seen.values()];
}

export function openApiDocument(types: ResourceType[], group: string, version: string): JsonObject | undefined {
  const served = types.filter((t) => t.group === group && t.version === version);
  if (served.length === 0) return undefined;
  const paths: JsonObject = {};
  for (const type of served) {
    const base = `/${documentPath(group, version)}${type.namespaced ? '/namespaces/{namespace}' : ''}/${type.resource}/{name}`;
    paths[base] = {
      patch: {
        operationId: `patch${type.namespaced ? 'Namespaced' : ''}${type.kind}`,
        'x-kubernetes-action': 'patch',
        'x-kubernetes-group-version-kind': { group, version, kind: type.kind },
        parameters: [
          { name: 'dryRun', in: 'query', schema: { type: 'string', uniqueItems: true } },
          { name: 'fieldManager', in: 'query', schema: { type: 'string', uniqueItems: true } },
          { name: 'fieldValidation', in: 'query', schema: { type: 'string', uniqueItems: true } },
        ],
        responses: {},
      },
    };
  }
  return { openapi: '3.0.0', info: { title: 'Kubernetes', version: SERVER_VERSION.gitVersion }, paths, components: { schemas: {} } };
}

/** /openapi/v3: where each group version's document is. */
export function openApiRoot(types: ResourceType[]): JsonObject {
  const paths: JsonObject = {};
  for (const { group, version } of groupVersions(types)) {
    const document = openApiDocument(types, group, version);
    const hash = createHash('sha512').update(JSON.stringify(document)).digest('hex').toUpperCase();
    paths[documentPath(group, version)] = { serverRelativeURL: `/openapi/v3/${documentPath(group, version)}?hash=${hash}` };
  }
  return { paths };
}
