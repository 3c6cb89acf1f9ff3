/**
 * What a request is about, read from its path and method as apiserver's RequestInfoFactory
 * reads it: a resource request (group, version, namespace, resource, name, subresource and the
 * verb RBAC sees) or a non-resource one (/version, /healthz, discovery).
 */
import { FieldSelector } from './selectors.js';
import { isValidPathSegmentName } from './name-validation.js';

/** Subresources of a namespace that stay with the namespace instead of naming a resource inside it. */
const NAMESPACE_SUBRESOURCES = new Set(['status', 'finalize']);

export interface RequestInfo {
  isResourceRequest: boolean;
  /** The URL path without the query. */
  path: string;
  /** RBAC verb: get list watch create update patch delete deletecollection, or the lowercase method for non-resource requests. */
  verb: string;
  apiPrefix: string;
  apiGroup: string;
  apiVersion: string;
  namespace: string;
  resource: string;
  subresource: string;
  name: string;
  /** The path parts from the resource on (resource, name, subresource, ...). */
  parts: string[];
}

export function parseRequestInfo(method: string, url: URL): RequestInfo {
  const path = url.pathname;
  const info: RequestInfo = {
    isResourceRequest: false, path, verb: method.toLowerCase(), apiPrefix: '', apiGroup: '', apiVersion: '',
    namespace: '', resource: '', subresource: '', name: '', parts: [],
  };
  let parts = path.split('/').filter((p) => p !== '').map(decodePart);
  if (parts.length < 3 || (parts[0] !== 'api' && parts[0] !== 'apis')) return info;
  info.apiPrefix = parts[0];
  parts = parts.slice(1);
  if (info.apiPrefix === 'apis') {
    if (parts.length < 3) return info;
    info.apiGroup = parts[0];
    parts = parts.slice(1);
  }
  info.isResourceRequest = true;
  info.apiVersion = parts[0];
  parts = parts.slice(1);

  switch (method) {
    case 'POST': info.verb = 'create'; break;
    case 'GET': case 'HEAD': info.verb = 'get'; break;
    case 'PUT': info.verb = 'update'; break;
    case 'PATCH': info.verb = 'patch'; break;
    case 'DELETE': info.verb = 'delete'; break;
    default: info.verb = '';
  }

  if (parts[0] === 'namespaces' && parts.length > 1) {
    info.namespace = parts[1];
    if (parts.length > 2 && !NAMESPACE_SUBRESOURCES.has(parts[2])) parts = parts.slice(2);
  }
  info.parts = parts;
  if (parts.length >= 3) info.subresource = parts[2];
  if (parts.length >= 2) info.name = parts[1];
  if (parts.length >= 1) info.resource = parts[0];

  if (info.name === '' && info.verb === 'get') {
    info.verb = isWatch(url) ? 'watch' : 'list';
    // A list narrowed to one name by field selector is authorized as that name (RBAC resourceNames).
    try {
      const name = FieldSelector.parse(url.searchParams.get('fieldSelector') ?? '').requiresExactMatch('metadata.name');
      if (name !== undefined && isValidPathSegmentName(name).length === 0) info.name = name;
    } catch {
      // A malformed selector is reported by the list itself.
    }
  }
  if (info.name === '' && info.verb === 'delete') info.verb = 'deletecollection';
  return info;
}

/** watch=true, watch=1, or any value but false/0. */
export function isWatch(url: URL): boolean {
  const value = url.searchParams.get('watch');
  if (value === null) return false;
  return !['false', '0'].includes(value.toLowerCase());
}

function decodePart(part: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}
