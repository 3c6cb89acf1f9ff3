/**
 * Runs the hooks of one phase in order, each under its failure policy. One hook's run is an
 * RxJS pipeline: each attempt is deferred and bounded by the hook's timeout; a failure under
 * `retry` is retried after an exponential back-off; the agent's shutdown signal ends the whole
 * thing at once (takeUntil), whatever the hook is doing.
 */
import { Observable, defaultIfEmpty, defer, lastValueFrom, map, retry, takeUntil, throwError, timeout, timer } from 'rxjs';
import { Backoff, type BackoffOptions } from '../../common/backoff.js';
import {
  AgentHookError, DEFAULT_FAILURE_POLICY, DEFAULT_HOOK_TIMEOUT_MS,
  type AgentHook, type HookContext, type HookPhase,
} from './hooks.js';

/** The back-off between attempts of a `retry` hook: 1 s, doubling, up to 60 s, +-20 % jitter. */
export const HOOK_RETRY_BACKOFF: Required<BackoffOptions> = { initialMs: 1_000, factor: 2, maxMs: 60_000, jitter: 0.2 };

export interface RunHooksOptions {
  /** Overrides parts of HOOK_RETRY_BACKOFF. */
  backoff?: BackoffOptions;
}

/** How a phase ended, when no `abort` hook failed (that rejects with AgentHookError). */
export interface HookRunResult {
  /** The agent's signal was aborted before every hook of the phase had finished; the rest did not run. */
  cancelled: boolean;
  /** The `warn` hooks that failed; the agent went on without them. */
  failed: string[];
}

/**
 * Runs the pre-start functions of `hooks` in order; call it before the agent connects, and
 * connect only if it resolves with `cancelled: false`.
 * @throws AgentHookError when a hook with failure policy `abort` fails.
 */
export function runPreStartHooks(hooks: readonly AgentHook[], ctx: HookContext, options: RunHooksOptions = {}): Promise<HookRunResult> {
  return runPhase('pre-start', hooks, ctx, options);
}

/**
 * Runs the post-start functions of `hooks` in order; call it once the agent holds its first
 * server stream, without awaiting it before serving (a `retry` hook may take long).
 * @throws AgentHookError when a hook with failure policy `abort` fails; stop the agent then.
 */
export function runPostStartHooks(hooks: readonly AgentHook[], ctx: HookContext, options: RunHooksOptions = {}): Promise<HookRunResult> {
  return runPhase('post-start', hooks, ctx, options);
}

async function runPhase(phase: HookPhase, hooks: readonly AgentHook[], ctx: HookContext, options: RunHooksOptions): Promise<HookRunResult> {
  const result: HookRunResult = { cancelled: false, failed: [] };
  for (const hook of hooks) {
    if (!(phase === 'pre-start' ? typeof hook.preStart === 'function' : typeof hook.postStart === 'function')) continue;
    if (ctx.signal.aborted) {
      result.cancelled = true;
      break;
    }
    const outcome = await runHook(phase, hook, ctx, options);
    if (outcome === 'cancelled') {
      result.cancelled = true;
      break;
    }
    if (outcome === 'failed') result.failed.push(hook.name);
  }
  return result;
}

type Outcome = 'done' | 'failed' | 'cancelled';

async function runHook(phase: HookPhase, hook: AgentHook, ctx: HookContext, options: RunHooksOptions): Promise<Outcome> {
  const policy = hook.failurePolicy ?? DEFAULT_FAILURE_POLICY;
  const timeoutMs = hook.timeoutMs ?? DEFAULT_HOOK_TIMEOUT_MS;
  const backoff = new Backoff({ ...HOOK_RETRY_BACKOFF, ...options.backoff });
  const hookLog = ctx.log.child(hook.name);
  const started = Date.now();
  let attempts = 0;

  const run$ = defer(() => {
    attempts++;
    return attempt(hook, phase, { ...ctx, log: hookLog }, timeoutMs);
  }).pipe(
    retry({
      delay: (err: unknown, retryCount: number) => {
        if (policy !== 'retry') return throwError(() => err);
        const delay = backoff.next();
        ctx.log.warn('agent hook failed; retrying', { hook: hook.name, phase, attempt: retryCount, in: `${delay}ms`, reason: reasonOf(err) });
        return timer(delay);
      },
    }),
    map((): Outcome => 'done'),
    takeUntil(aborted(ctx.signal)),
    defaultIfEmpty<Outcome, Outcome>('cancelled'),
  );

  try {
    const outcome = await lastValueFrom(run$);
    if (outcome === 'done') ctx.log.info('agent hook done', { hook: hook.name, phase, attempts, took: `${Date.now() - started}ms` });
    else ctx.log.info('agent hook given up: the agent is shutting down', { hook: hook.name, phase, attempts });
    return outcome;
  } catch (err) {
    if (policy === 'warn') {
      ctx.log.warn('agent hook failed; going on without it', { hook: hook.name, phase, reason: reasonOf(err) });
      return 'failed';
    }
    throw new AgentHookError(hook.name, phase, reasonOf(err), { cause: err });
  }
}

/**
 * One call of the hook's function, as an observable that emits once when it resolves. Its
 * signal follows the agent's, and is aborted as well when the attempt is given up before it
 * succeeded: on timeout, on failure, or on shutdown.
 */
function attempt(hook: AgentHook, phase: HookPhase, ctx: HookContext, timeoutMs: number): Observable<void> {
  return new Observable<void>((subscriber) => {
    const ended = new AbortController();
    let succeeded = false;
    let failed = false;
    Promise.resolve()
      .then(() => {
        const attemptCtx: HookContext = { ...ctx, signal: AbortSignal.any([ctx.signal, ended.signal]) };
        return phase === 'pre-start' ? hook.preStart?.(attemptCtx) : hook.postStart?.(attemptCtx);
      })
      .then(() => {
        succeeded = true;
        subscriber.next();
        subscriber.complete();
      }, (err: unknown) => {
        failed = true;
        subscriber.error(err);
      });
    return () => {
      if (succeeded) return;
      ended.abort(new Error(failed ? `the hook "${hook.name}" failed` : `the hook "${hook.name}" did not finish within ${duration(timeoutMs)}`));
    };
  }).pipe(
    timeout({
      first: timeoutMs,
      with: () => throwError(() => new Error(`did not finish within ${duration(timeoutMs)} (the hook's timeout for one attempt)`)),
    }),
  );
}

/** Emits once, at once if `signal` is already aborted. */
function aborted(signal: AbortSignal): Observable<void> {
  return new Observable<void>((subscriber) => {
    if (signal.aborted) {
      subscriber.next();
      return undefined;
    }
    const onAbort = () => subscriber.next();
    signal.addEventListener('abort', onAbort, { once: true });
    return () => signal.removeEventListener('abort', onAbort);
  });
}

function reasonOf(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return typeof err === 'string' ? err : `it threw ${String(err)}`;
}

function duration(ms: number): string {
  return ms < 1_000 ? `${ms}ms` : `${Number((ms / 1_000).toFixed(3))}s`;
}
