/**
 * Kubernetes API failures in words an operator can act on: which object, which verb, what
 * the API server said, and what to grant or fix. Also whether trying again may help, which
 * the retrying loops (certificate manager, signer, watches) go by.
 */
import { ApiException } from '@kubernetes/client-node';

/** What was being done when the call failed. */
export interface ApiAction {
  verb: string;
  /** Plural resource, with the subresource if any: `certificatesigningrequests/approval`. */
  resource: string;
  /** '' for the core group. */
  group: string;
  name?: string;
  namespace?: string;
}

/** The parts of a Kubernetes Status that the messages use. */
interface Status {
  message?: string;
  reason?: string;
  details?: { causes?: Array<{ field?: string; message?: string }> };
}

export class KubeApiError extends Error {
  override readonly name = 'KubeApiError';

  constructor(
    message: string,
    /** HTTP status, or undefined when the API server was not reached. */
    readonly code: number | undefined,
    /** The Status reason (Forbidden, NotFound, AlreadyExists, Conflict, Invalid, ...). */
    readonly reason: string | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** Unreachable, throttled or failing servers recover; a refusal does not until someone acts. */
  get retryable(): boolean {
    return this.code === undefined || this.code === 429 || this.code >= 500;
  }
}

/** The HTTP status of a failed client-node call (ApiException, or a watch's error), if any. */
export function statusCodeOf(err: unknown): number | undefined {
  if (err instanceof ApiException) return err.code;
  const code = (err as { statusCode?: unknown; code?: unknown })?.statusCode ?? (err as { code?: unknown })?.code;
  return typeof code === 'number' ? code : undefined;
}

function statusOf(err: unknown): Status | undefined {
  if (!(err instanceof ApiException)) return undefined;
  const body: unknown = err.body;
  if (typeof body === 'object' && body !== null) return body;
  if (typeof body !== 'string') return undefined;
  try {
    return JSON.parse(body) as Status;
  } catch {
    return { message: body.slice(0, 200) };
  }
}

function describeAction(action: ApiAction): string {
  const what = action.group ? `${action.resource.split('/')[0]}.${action.group}` : action.resource.split('/')[0];
  const sub = action.resource.includes('/') ? ` (subresource ${action.resource.split('/')[1]})` : '';
  return `${action.verb} ${what}${action.name ? ` "${action.name}"` : ''}${sub}${action.namespace ? ` in namespace "${action.namespace}"` : ''}`;
}

/** Turns any failure of a client-node call into a KubeApiError with an operator's message. */
export function kubeApiError(err: unknown, action: ApiAction, server: string): KubeApiError {
  if (err instanceof KubeApiError) return err;
  const code = statusCodeOf(err);
  const status = statusOf(err);
  const doing = `cannot ${describeAction(action)} at ${server}`;
  const said = status?.message ? `: ${status.message}` : '';
  if (code === undefined) {
    const cause = (err as NodeJS.ErrnoException)?.cause as NodeJS.ErrnoException | undefined;
    const reason = cause?.code ?? (err as NodeJS.ErrnoException)?.code ?? (err as Error)?.message ?? String(err);
    return new KubeApiError(`${doing}: the API server is not reachable (${reason}); check the server address of the kubeconfig and that it can be reached from here`, undefined, undefined, { cause: err });
  }
  let advice: string;
  switch (code) {
    case 401:
      advice = 'the API server does not accept the credentials (401 Unauthorized): the token or client certificate is invalid, expired, or from another cluster';
      break;
    case 403:
      advice = `forbidden${said}; grant the caller "${action.verb}" on resource "${action.resource}" in API group "${action.group}"${action.namespace ? ` in namespace "${action.namespace}"` : ''} (a Role or ClusterRole and its binding; see k8s/)`;
      break;
    case 404:
      advice = `not found${said}`;
      break;
    case 409:
      advice = `${status?.reason === 'AlreadyExists' ? 'it already exists' : 'it was changed meanwhile'}${said}`;
      break;
    case 422: {
      const causes = status?.details?.causes?.map((c) => `${c.field ? `${c.field}: ` : ''}${c.message ?? ''}`).join('; ');
      advice = `the API server rejected it as invalid${causes ? ` (${causes})` : said}`;
      break;
    }
    default:
      advice = `the API server answered ${code}${status?.reason ? ` ${status.reason}` : ''}${said}`;
  }
  return new KubeApiError(`${doing}: ${advice}`, code, status?.reason, { cause: err });
}

/** Runs a client-node call and rethrows its failure as a KubeApiError. */
export async function kubeCall<T>(action: ApiAction, server: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw kubeApiError(err, action, server);
  }
}
