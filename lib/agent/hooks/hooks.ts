/**
 * Agent start hooks: work an agent does before it connects to the tunnel server (pre-start)
 * and once it holds its first server stream (post-start), such as reporting the managed
 * cluster's credential to the hub. What a hook is, what it is given, and how its failure is
 * treated.
 */
import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from '../../observe/log.js';

/**
 * What a failing hook means for the agent:
 * - `abort`: the agent stops with an error that names the hook and what it said. A
 *   pre-start hook that aborts keeps the agent from ever connecting.
 * - `retry`: the hook runs again after an exponential back-off (1 s, doubling, up to 60 s,
 *   with jitter) until it succeeds or the agent shuts down; each failure is logged at warn
 *   with the attempt and the next delay. Later hooks of the same phase wait for it.
 * - `warn`: the failure is logged and the agent goes on with the next hook.
 */
export type HookFailurePolicy = 'abort' | 'retry' | 'warn';

export const HOOK_FAILURE_POLICIES: readonly HookFailurePolicy[] = ['abort', 'retry', 'warn'];

/** The policy of a hook that names none. */
export const DEFAULT_FAILURE_POLICY: HookFailurePolicy = 'abort';

/** How long one attempt of a hook may take when the hook names no `timeoutMs`. */
export const DEFAULT_HOOK_TIMEOUT_MS = 30_000;

/** Which of a hook's functions is running. */
export type HookPhase = 'pre-start' | 'post-start';

/** The agent as a hook sees it. */
export interface HookAgentConfig {
  /** The agent's `--cluster-name`, if it was given. */
  clusterName?: string;
  agentID: string;
  /** host:port of the tunnel server the agent dials. */
  serverAddress: string;
  /** The `--hook-option KEY=VALUE` flags, by key (see parseHookOptions). */
  options: ReadonlyMap<string, string>;
}

/**
 * What a hook's function is given. Each attempt gets its own context: `log` is the agent's
 * logger for this hook, and `signal` is aborted when the agent shuts down and also when this
 * attempt is given up (it timed out or failed), so a hook can stop whatever it started. After
 * an attempt succeeds its signal stays live until shutdown, so work it started in the
 * background can be bound to it.
 */
export interface HookContext {
  config: HookAgentConfig;
  /**
   * The hub's API (reached through the tunnel server's reverse proxy), or undefined when the
   * agent has none; a hook that needs it calls requireHub, which fails with an operator's
   * message.
   */
  hub: KubeConfig | undefined;
  /**
   * The managed cluster's API: the pod's service account, or `--managed-kubeconfig`; undefined
   * when the agent runs outside a cluster and no kubeconfig was given (see requireManaged).
   */
  managed: KubeConfig | undefined;
  log: Logger;
  signal: AbortSignal;
}

/**
 * An agent start hook. It has a pre-start function, a post-start function, or both:
 * pre-start functions run in the order of the hook list before the agent connects; post-start
 * functions run in that order once the agent holds its first server stream. A function that
 * throws, rejects or outlasts `timeoutMs` has failed, and `failurePolicy` says what follows;
 * no hook crashes the process or holds up the agent's shutdown.
 *
 * ```ts
 * export default (options: ReadonlyMap<string, string>): AgentHook => ({
 *   name: 'announce',
 *   failurePolicy: 'retry',
 *   async postStart(ctx) {
 *     ctx.log.info('connected', { cluster: ctx.config.clusterName, target: options.get('target') });
 *   },
 * });
 * ```
 */
export interface AgentHook {
  /** Names the hook in logs and errors. Unique within one agent. */
  name: string;
  /** Default `abort`. */
  failurePolicy?: HookFailurePolicy;
  /** The most one attempt may take, in milliseconds; default 30 s. The attempt's signal is aborted when it passes. */
  timeoutMs?: number;
  preStart?(ctx: HookContext): Promise<void>;
  postStart?(ctx: HookContext): Promise<void>;
}

/** An `abort`-policy hook failed: the agent is to stop. */
export class AgentHookError extends Error {
  override readonly name = 'AgentHookError';

  constructor(
    readonly hook: string,
    readonly phase: HookPhase,
    /** What the hook said (its error's message, or that it timed out). */
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(`the ${phase} hook "${hook}" failed: ${reason}; ${phase === 'pre-start' ? 'the agent does not connect' : 'the agent stops'} (the hook's failure policy is abort)`, options);
  }
}

/** The hub's KubeConfig of a context, or an error saying that the agent was started without one. */
export function requireHub(ctx: HookContext, hook: string): KubeConfig {
  if (ctx.hub) return ctx.hub;
  throw new Error(`the hook "${hook}" needs the hub's Kubernetes API, but the agent has no hub kubeconfig: start the agent with access to the hub's API`);
}

/** The managed cluster's KubeConfig of a context, or an error saying how to give one. */
export function requireManaged(ctx: HookContext, hook: string): KubeConfig {
  if (ctx.managed) return ctx.managed;
  throw new Error(`the hook "${hook}" needs the managed cluster's Kubernetes API, but the agent runs outside a pod and has no --managed-kubeconfig: run it in the cluster with a service account, or give --managed-kubeconfig=FILE`);
}
