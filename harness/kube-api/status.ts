/**
 * The API server's errors: a metav1.Status with the code, reason, message and details that
 * apimachinery's errors.go gives each case. Clients branch on reason and code and people read
 * message, so the wording follows the real server, including its quirks (details.kind is the
 * resource for NotFound/AlreadyExists/Conflict/Forbidden but the Kind for Invalid).
 */
import type { JsonObject } from './json.js';
import { aggregateText, errorBody, type FieldError } from './field-errors.js';

/** metav1.OptimisticLockErrorMsg. */
export const OPTIMISTIC_LOCK_MESSAGE = 'the object has been modified; please apply your changes to the latest version and try again';

export interface StatusCause {
  reason?: string;
  message?: string;
  field?: string;
}

export interface StatusDetails {
  name?: string;
  group?: string;
  kind?: string;
  uid?: string;
  causes?: StatusCause[];
  retryAfterSeconds?: number;
}

/** An error the server answers with: a Status body and its HTTP code. */
export class ApiError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: StatusDetails,
  ) {
    super(message);
  }

  /** The Status body, with empty fields left out as Go's omitempty does. */
  toStatus(): JsonObject {
    const status: JsonObject = { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: this.message };
    if (this.reason !== '') status.reason = this.reason;
    if (this.details) status.details = compactDetails(this.details);
    status.code = this.code;
    return status;
  }
}

/** A group/resource pair as errors print it: "secrets", "certificatesigningrequests.certificates.k8s.io". */
export interface GroupResource {
  group: string;
  resource: string;
}

export function qualifiedResource(gr: GroupResource): string {
  return gr.group === '' ? gr.resource : `${gr.resource}.${gr.group}`;
}

export function qualifiedKind(group: string, kind: string): string {
  return group === '' ? kind : `${kind}.${group}`;
}

export function notFound(gr: GroupResource, name: string): ApiError {
  return new ApiError(404, 'NotFound', `${qualifiedResource(gr)} "${name}" not found`, { name, group: gr.group, kind: gr.resource });
}

export function alreadyExists(gr: GroupResource, name: string): ApiError {
  return new ApiError(409, 'AlreadyExists', `${qualifiedResource(gr)} "${name}" already exists`, { name, group: gr.group, kind: gr.resource });
}

export function conflict(gr: GroupResource, name: string, why: string = OPTIMISTIC_LOCK_MESSAGE): ApiError {
  return new ApiError(409, 'Conflict', `Operation cannot be fulfilled on ${qualifiedResource(gr)} "${name}": ${why}`, { name, group: gr.group, kind: gr.resource });
}

/** 422 Invalid: details.kind is the Kind (or, for a missing resourceVersion, the resource, as the generic store does). */
export function invalidObject(group: string, kind: string, name: string, errors: FieldError[]): ApiError {
  const causes = errors.map((e) => ({ reason: e.type, message: errorBody(e), field: e.field }));
  const subject = `${qualifiedKind(group, kind)} "${name}" is invalid`;
  const message = errors.length === 0 ? subject : `${subject}: ${aggregateText(errors)}`;
  return new ApiError(422, 'Invalid', message, { name, group, kind, causes });
}

export function forbiddenError(gr: GroupResource | undefined, name: string, why: string, causes?: StatusCause[]): ApiError {
  let message: string;
  if (!gr || gr.resource === '') message = `forbidden: ${why}`;
  else if (name === '') message = `${qualifiedResource(gr)} is forbidden: ${why}`;
  else message = `${qualifiedResource(gr)} "${name}" is forbidden: ${why}`;
  return new ApiError(403, 'Forbidden', message, { name, group: gr?.group ?? '', kind: gr?.resource ?? '', ...(causes ? { causes } : {}) });
}

/** The authentication failure the server answers without saying why. */
export function unauthorized(): ApiError {
  return new ApiError(401, 'Unauthorized', 'Unauthorized');
}

export function badRequest(message: string): ApiError {
  return new ApiError(400, 'BadRequest', message);
}

/** Any other failure (errors.NewInternalError). */
export function internalError(message: string): ApiError {
  return new ApiError(500, 'InternalError', `Internal error occurred: ${message}`, { causes: [{ message }] });
}

/** An error that is not an API status reaches the client as 500 with reason Unknown (""). */
export function unknownServerError(message: string): ApiError {
  return new ApiError(500, '', message);
}

export function expired(message: string): ApiError {
  return new ApiError(410, 'Expired', message);
}

export function methodNotSupported(gr: GroupResource, action: string): ApiError {
  return new ApiError(405, 'MethodNotAllowed', `${action} is not supported on resources of kind "${qualifiedResource(gr)}"`, { group: gr.group, kind: gr.resource });
}

export function unsupportedMediaType(accepted: string[]): ApiError {
  return new ApiError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: ${accepted.join(', ')}`);
}

/** The 404 for a path that names no API, resource or object type. */
export function pathNotFound(): ApiError {
  return new ApiError(404, 'NotFound', 'the server could not find the requested resource', {});
}

/** A list or watch at a resourceVersion the server has not reached (storage.NewTooLargeResourceVersionError). */
export function tooLargeResourceVersion(requested: number, current: number): ApiError {
  return new ApiError(504, 'Timeout', `Timeout: Too large resource version: ${requested}, current: ${current}`, {
    causes: [{ reason: 'ResourceVersionTooLarge', message: 'Too large resource version' }],
    retryAfterSeconds: 1,
  });
}

function compactDetails(details: StatusDetails): JsonObject {
  const out: JsonObject = {};
  if (details.name) out.name = details.name;
  if (details.group) out.group = details.group;
  if (details.kind) out.kind = details.kind;
  if (details.uid) out.uid = details.uid;
  if (details.causes && details.causes.length > 0) out.causes = details.causes;
  if (details.retryAfterSeconds) out.retryAfterSeconds = details.retryAfterSeconds;
  return out;
}
