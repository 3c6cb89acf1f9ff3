/**
 * Authorization as RBAC decides it: system:masters may do anything; everyone else only what a
 * rule granted to their user name or one of their groups allows (verb, API group, resource or
 * resource/subresource, optional resource names, and cluster-wide or per-namespace scope).
 * Discovery, /version and the health endpoints are open to every authenticated user, as the
 * default system:discovery, system:basic-user and system:public-info-viewer roles make them.
 */
import type { RequestInfo } from './request-info.js';
import { MASTERS_GROUP, type UserInfo } from './user.js';
import { forbiddenError, type ApiError } from './status.js';

/** Non-resource paths every authenticated user may GET (the default discovery roles). */
const OPEN_PATHS = ['/api', '/api/*', '/apis', '/apis/*', '/healthz', '/livez', '/readyz', '/version', '/version/', '/openapi', '/openapi/*'];

export interface PolicyRule {
  /** get list watch create update patch delete deletecollection approve sign, or '*'. */
  verbs: string[];
  /** '' for core, '*' for any. */
  apiGroups: string[];
  /** 'secrets', 'certificatesigningrequests/approval', 'signers', '*'. */
  resources: string[];
  /** For signers: 'example.com/signer' or 'example.com/*'. */
  resourceNames?: string[];
  /** Absent: cluster-wide (a ClusterRole bound cluster-wide); present: only in these namespaces (RoleBindings). */
  namespaces?: string[];
}

export interface Subject {
  user?: string;
  group?: string;
}

/** What is being asked: RequestInfo's fields plus the user. */
export interface Attributes {
  user: UserInfo;
  verb: string;
  isResourceRequest: boolean;
  path: string;
  apiGroup: string;
  resource: string;
  subresource: string;
  name: string;
  namespace: string;
}

export function attributesOf(user: UserInfo, info: RequestInfo): Attributes {
  return {
    user, verb: info.verb, isResourceRequest: info.isResourceRequest, path: info.path, apiGroup: info.apiGroup,
    resource: info.resource, subresource: info.subresource, name: info.name, namespace: info.namespace,
  };
}

function subjectKey(subject: Subject): string {
  if (subject.user !== undefined) return `user:${subject.user}`;
  if (subject.group !== undefined) return `group:${subject.group}`;
  throw new Error('a subject names a user or a group');
}

export class Authorizer {
  private readonly rules = new Map<string, PolicyRule[]>();

  grant(subject: Subject, rules: PolicyRule[]): void {
    const key = subjectKey(subject);
    this.rules.set(key, [...(this.rules.get(key) ?? []), ...rules.map((r) => ({ ...r }))]);
  }

  revokeAll(subject: Subject): void {
    this.rules.delete(subjectKey(subject));
  }

  authorize(attributes: Attributes): boolean {
    const { user } = attributes;
    if ((user.groups ?? []).includes(MASTERS_GROUP)) return true;
    if (!attributes.isResourceRequest) {
      if (attributes.verb === 'get' && OPEN_PATHS.some((p) => pathMatches(p, attributes.path))) return true;
    }
    const keys = [`user:${user.username}`, ...(user.groups ?? []).map((g) => `group:${g}`)];
    return keys.some((key) => (this.rules.get(key) ?? []).some((rule) => ruleAllows(rule, attributes)));
  }

  /** 403 with the RBAC denial as the real server words it. */
  forbidden(attributes: Attributes): ApiError {
    const gr = attributes.isResourceRequest ? { group: attributes.apiGroup, resource: attributes.resource } : undefined;
    return forbiddenError(gr, attributes.name, forbiddenMessage(attributes));
  }
}

function pathMatches(pattern: string, path: string): boolean {
  return pattern.endsWith('*') ? path.startsWith(pattern.slice(0, -1)) : pattern === path;
}

function ruleAllows(rule: PolicyRule, a: Attributes): boolean {
  if (!a.isResourceRequest) return false;
  if (rule.namespaces !== undefined && (a.namespace === '' || !rule.namespaces.includes(a.namespace))) return false;
  if (!rule.verbs.includes('*') && !rule.verbs.includes(a.verb)) return false;
  if (!rule.apiGroups.includes('*') && !rule.apiGroups.includes(a.apiGroup)) return false;
  const combined = a.subresource === '' ? a.resource : `${a.resource}/${a.subresource}`;
  const resourceMatches = rule.resources.some((r) => r === '*' || r === combined || (a.subresource !== '' && r === `*/${a.subresource}`));
  if (!resourceMatches) return false;
  return !rule.resourceNames || rule.resourceNames.length === 0 || rule.resourceNames.includes(a.name);
}

/** The reason text of an RBAC denial (responsewriters.forbiddenMessage). */
export function forbiddenMessage(a: Attributes): string {
  const user = a.user.username;
  if (!a.isResourceRequest) return `User "${user}" cannot ${a.verb} path "${a.path}"`;
  const resource = a.subresource === '' ? a.resource : `${a.resource}/${a.subresource}`;
  const scope = a.namespace === '' ? 'at the cluster scope' : `in the namespace "${a.namespace}"`;
  return `User "${user}" cannot ${a.verb} resource "${resource}" in API group "${a.apiGroup}" ${scope}`;
}
