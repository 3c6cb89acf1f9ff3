/**
 * Routes an authenticated, authorized request to what serves it: discovery and health for
 * non-resource paths; for resource paths the registry verb, a watch stream, TokenRequest or
 * TokenReview. Unknown paths are 404 and methods a resource does not serve 405, as on the real
 * server. Everything answers JSON except the health checks, which answer "ok".
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isObject, metaString, type JsonObject } from './json.js';
import { ApiError, badRequest, pathNotFound, unsupportedMediaType } from './status.js';
import { decodeKubernetesProtobuf, PROTOBUF_CONTENT_TYPE } from './protobuf.js';
import { apiGroupDocument, apiGroupList, apiResourceList, apiVersions, versionInfo, type ExtraResource } from './discovery.js';
import { isWatch, type RequestInfo } from './request-info.js';
import { Selection } from './selection.js';
import { WatchStream } from './watch.js';
import { openApiDocument, openApiRoot } from './openapi.js';
import { TABLE_CONTENT_TYPE, toTable, wantsTable } from './tables.js';
import { parseRevision, type DeleteOptions, type Registry } from './registry.js';
import { tokenRequest, tokenReview, TOKEN_DISCOVERY } from './token-endpoints.js';
import type { Authenticator } from './auth.js';
import type { ServiceAccountTokens } from './service-account-tokens.js';
import type { ResourceType, StrategyContext } from './resource-types.js';
import type { UserInfo } from './user.js';

const HEALTH_PATHS = new Set(['/healthz', '/livez', '/readyz']);
const NOT_ALLOWED = 'the server does not allow this method on the requested resource';

export interface HandlerDeps {
  registry: Registry;
  authenticator: Authenticator;
  tokens: ServiceAccountTokens;
  serverAddress: () => string;
  now: () => Date;
  /** Watches in progress, so that stopping the server can end them. */
  watches: Set<WatchStream>;
}

/** What to send back: a JSON body with a code, plain text, or nothing (a watch streams itself). */
export type Reply = { code: number; body: JsonObject; contentType?: string } | { code: number; text: string } | { streamed: true };

function methodNotAllowed(): ApiError {
  return new ApiError(405, 'MethodNotAllowed', NOT_ALLOWED, {});
}

export class ApiHandler {
  private readonly extras: ExtraResource[] = TOKEN_DISCOVERY;

  constructor(private readonly deps: HandlerDeps) {}

  async handle(req: IncomingMessage, res: ServerResponse, url: URL, info: RequestInfo, user: UserInfo, raw: Buffer): Promise<Reply> {
    const body = new RequestBody(raw, req);
    if (!info.isResourceRequest) return this.nonResource(req.method ?? 'GET', info.path);
    const ctx: StrategyContext = { user, now: this.deps.now(), store: this.deps.registry.store };
    const { registry } = this.deps;
    if (info.apiGroup === 'authentication.k8s.io' && info.apiVersion === 'v1' && info.resource === 'tokenreviews' && info.namespace === '' && info.name === '') {
      if (info.verb !== 'create') throw methodNotAllowed();
      return { code: 201, body: tokenReview(body.object(), info.namespace, this.deps.authenticator, ctx.now) };
    }
    const type = this.resolveType(info);
    if (type.resource === 'namespaces' && type.group === '') info = { ...info, namespace: '' };
    if (info.subresource === 'token' && type.group === '' && type.resource === 'serviceaccounts') {
      if (info.verb !== 'create') throw methodNotAllowed();
      return { code: 201, body: tokenRequest(body.object(), info.namespace, info.name, registry.store, this.deps.tokens, ctx.now) };
    }
    if (info.subresource !== '' && !(info.subresource in type.subresources)) throw pathNotFound();
    if (info.parts.length > 3) throw pathNotFound();
    if (url.searchParams.has('dryRun')) throw badRequest('dryRun is not supported by this API server double: the request would have been applied');
    const namespace = type.namespaced ? info.namespace : '';
    const nameFromPath = info.parts.length >= 2;
    if (!nameFromPath) return this.collection(req, res, url, info, type, namespace, body, ctx);
    if (type.namespaced !== (info.namespace !== '')) throw pathNotFound();
    const name = info.parts[1];
    switch (req.method) {
      case 'GET':
      case 'HEAD': {
        const object = registry.get(type, namespace, name);
        if (!wantsTable(req.headers.accept)) return { code: 200, body: object };
        const table = toTable(type, [object], { resourceVersion: metaString(object, 'resourceVersion') }, url.searchParams.get('includeObject') ?? 'Metadata', ctx.now);
        return { code: 200, body: table, contentType: TABLE_CONTENT_TYPE };
      }
      case 'PUT': {
        const result = registry.update(type, namespace, name, body.object(), info.subresource, ctx);
        return { code: result.created ? 201 : 200, body: result.object };
      }
      case 'PATCH':
        return { code: 200, body: registry.patch(type, namespace, name, body.contentType, body.text(), info.subresource, ctx) };
      case 'DELETE': {
        if (info.subresource !== '') throw methodNotAllowed();
        const result = registry.delete(type, namespace, name, deleteOptions(url, body), ctx);
        return { code: result.code, body: result.body };
      }
      default:
        throw methodNotAllowed();
    }
  }

  private async collection(req: IncomingMessage, res: ServerResponse, url: URL, info: RequestInfo, type: ResourceType, namespace: string, body: RequestBody, ctx: StrategyContext): Promise<Reply> {
    const { registry } = this.deps;
    const scope = type.namespaced && info.namespace !== '' ? info.namespace : undefined;
    if (!type.namespaced && info.namespace !== '') throw pathNotFound();
    switch (info.verb) {
      case 'list':
      case 'watch': {
        const selection = Selection.parse(type, url.searchParams, scope);
        if (!isWatch(url)) {
          const list = await registry.list(type, scope, url.searchParams, selection);
          if (!wantsTable(req.headers.accept)) return { code: 200, body: list };
          const items = (list.items as JsonObject[]).map((item) => ({ kind: type.kind, apiVersion: list.apiVersion, ...item }));
          return { code: 200, body: toTable(type, items, list.metadata as JsonObject, url.searchParams.get('includeObject') ?? 'Metadata', ctx.now), contentType: TABLE_CONTENT_TYPE };
        }
        const resourceVersion = url.searchParams.get('resourceVersion') ?? '';
        if (resourceVersion !== '' && resourceVersion !== '0') await registry.waitForRevision(parseRevision(resourceVersion));
        const timeout = url.searchParams.get('timeoutSeconds');
        const includeObject = url.searchParams.get('includeObject') ?? 'Metadata';
        const render = wantsTable(req.headers.accept) ? (object: JsonObject) => toTable(type, [object], { resourceVersion: metaString(object, 'resourceVersion') }, includeObject, this.deps.now()) : undefined;
        const stream = new WatchStream(registry.store, res, {
          type, selection, resourceVersion, ...(render ? { render } : {}),
          allowBookmarks: url.searchParams.get('allowWatchBookmarks') === 'true',
          ...(timeout !== null && /^\d+$/.test(timeout) ? { timeoutSeconds: Number(timeout) } : {}),
        });
        this.deps.watches.add(stream);
        res.on('close', () => this.deps.watches.delete(stream));
        stream.start();
        return { streamed: true };
      }
      case 'create':
        if (type.namespaced && info.namespace === '') throw methodNotAllowed();
        return { code: 201, body: registry.create(type, namespace, body.object(), ctx) };
      case 'deletecollection': {
        if (type.namespaced && info.namespace === '') throw methodNotAllowed();
        const selection = Selection.parse(type, url.searchParams, scope);
        return { code: 200, body: registry.deleteCollection(type, scope, selection, deleteOptions(url, body), ctx) };
      }
      default:
        throw methodNotAllowed();
    }
  }

  private resolveType(info: RequestInfo): ResourceType {
    const type = this.deps.registry.findServed(info.apiGroup, info.apiVersion, info.resource);
    if (!type) throw pathNotFound();
    return type;
  }

  private nonResource(method: string, path: string): Reply {
    const normalized = path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
    if (HEALTH_PATHS.has(normalized)) return { code: 200, text: 'ok' };
    if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed();
    const types = this.deps.registry.all();
    const parts = normalized.split('/').filter((p) => p !== '');
    if (normalized === '/version') return { code: 200, body: versionInfo() };
    if (normalized === '/api') return { code: 200, body: apiVersions(this.deps.serverAddress()) };
    if (normalized === '/apis') return { code: 200, body: apiGroupList(types, this.extras) };
    if (parts[0] === 'api' && parts.length === 2) return this.found(apiResourceList(types, this.extras, '', parts[1]));
    if (parts[0] === 'apis' && parts.length === 2) return this.found(apiGroupDocument(types, this.extras, parts[1]));
    if (parts[0] === 'apis' && parts.length === 3) return this.found(apiResourceList(types, this.extras, parts[1], parts[2]));
    if (normalized === '/openapi/v3') return { code: 200, body: openApiRoot(types) };
    if (parts[0] === 'openapi' && parts[1] === 'v3' && parts[2] === 'api' && parts.length === 4) return this.found(openApiDocument(types, '', parts[3]));
    if (parts[0] === 'openapi' && parts[1] === 'v3' && parts[2] === 'apis' && parts.length === 5) return this.found(openApiDocument(types, parts[3], parts[4]));
    throw pathNotFound();
  }

  private found(body: JsonObject | undefined): Reply {
    if (!body) throw pathNotFound();
    return { code: 200, body };
  }
}

/** A request body read as the Content-Type says: JSON or Kubernetes protobuf (patches are text). */
class RequestBody {
  readonly contentType: string;

  constructor(private readonly raw: Buffer, req: IncomingMessage) {
    this.contentType = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  }

  get empty(): boolean {
    return this.raw.length === 0 || this.raw.toString('utf8').trim() === '';
  }

  text(): string {
    return this.raw.toString('utf8');
  }

  /** The object in the body; 400 when empty or malformed, 415 for other formats. */
  object(): unknown {
    if (this.contentType === PROTOBUF_CONTENT_TYPE) return decodeKubernetesProtobuf(this.raw);
    if (this.contentType !== '' && this.contentType !== 'application/json' && this.contentType !== '*/*') {
      throw unsupportedMediaType(['application/json', PROTOBUF_CONTENT_TYPE]);
    }
    if (this.empty) throw badRequest('the object provided is unrecognized: the request body is empty');
    try {
      return JSON.parse(this.text()) as unknown;
    } catch (err) {
      throw badRequest(`couldn't get version/kind; json parse error: ${(err as Error).message}`);
    }
  }
}

/** DeleteOptions from the body (client-node and kubectl send one) and the query. */
function deleteOptions(url: URL, body: RequestBody): DeleteOptions {
  const options: DeleteOptions = {};
  if (!body.empty) {
    const parsed = body.object();
    if (isObject(parsed)) {
      if (typeof parsed.gracePeriodSeconds === 'number') options.gracePeriodSeconds = parsed.gracePeriodSeconds;
      if (typeof parsed.orphanDependents === 'boolean') options.orphanDependents = parsed.orphanDependents;
      if (isObject(parsed.preconditions)) {
        const { uid, resourceVersion } = parsed.preconditions;
        options.preconditions = { ...(typeof uid === 'string' ? { uid } : {}), ...(typeof resourceVersion === 'string' ? { resourceVersion } : {}) };
      }
    }
  }
  const grace = url.searchParams.get('gracePeriodSeconds');
  if (grace !== null && /^\d+$/.test(grace)) options.gracePeriodSeconds = Number(grace);
  return options;
}
