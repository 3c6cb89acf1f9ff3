/**
 * From flags to hooks: `--hook-option KEY=VALUE` values into a map, `--hook-provider` (`none`,
 * `tkestack`, or a module path) into hooks, and the managed cluster's KubeConfig. Everything
 * wrong with them is a UsageError that says which flag or file, and what was expected.
 */
import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { KubeConfig } from '@kubernetes/client-node';
import { UsageError } from '../../common/errors.js';
import { loadKube, runningInCluster } from '../../kube/kube-config.js';
import { HOOK_FAILURE_POLICIES, type AgentHook } from './hooks.js';
import { TKESTACK_PROVIDER, tkestackHooks } from './tkestack.js';

/** The provider that gives no hooks. */
export const NO_HOOKS_PROVIDER = 'none';

/** A module's way of giving hooks: one, several, or a function of the hook options that gives them. */
export type HookExport =
  | AgentHook
  | AgentHook[]
  | ((options: ReadonlyMap<string, string>) => AgentHook | AgentHook[] | Promise<AgentHook | AgentHook[]>);

const EXPECTED_EXPORT = 'a module whose `default` or `hooks` export is a hook ({ name, failurePolicy?, timeoutMs?, preStart?, postStart? }), an array of hooks, or a function (options) => hook(s)';

/**
 * The `--hook-option` values as a map. Each is `KEY=VALUE` (the value may be empty and may
 * hold `=`); a key given twice is an error.
 */
export function parseHookOptions(values: readonly string[]): Map<string, string> {
  const options = new Map<string, string>();
  for (const value of values) {
    const eq = value.indexOf('=');
    if (eq <= 0) {
      throw new UsageError(`--hook-option "${value}" is not KEY=VALUE: give each option as --hook-option KEY=VALUE, e.g. --hook-option cluster-name=cluster-a`);
    }
    const key = value.slice(0, eq).trim();
    if (key === '') throw new UsageError(`--hook-option "${value}" has an empty key: give KEY=VALUE`);
    if (options.has(key)) throw new UsageError(`--hook-option ${key} is given twice: give each key once`);
    options.set(key, value.slice(eq + 1));
  }
  return options;
}

/**
 * The hooks of a provider:
 * - `none` (or an empty spec): no hooks; hook options are then an error.
 * - `tkestack`: reports the managed cluster's credential to the hub's ClusterCredential
 *   (see tkestack.ts; options `cluster-name`, `tenant-id`).
 * - anything else is a module path, absolute or relative to the working directory, that is
 *   imported; its `default` or `hooks` export gives the hooks (HookExport). A factory is
 *   called with `options`.
 * @throws UsageError naming the provider or module and what was expected.
 */
export async function loadHookProvider(spec: string, options: ReadonlyMap<string, string>): Promise<AgentHook[]> {
  const provider = spec.trim();
  if (provider === '' || provider === NO_HOOKS_PROVIDER) {
    if (options.size > 0) throw new UsageError(`--hook-option ${[...options.keys()].join(', ')} given, but --hook-provider is ${NO_HOOKS_PROVIDER}: give a hook provider, or leave out the options`);
    return [];
  }
  if (provider === TKESTACK_PROVIDER) return tkestackHooks(options);
  if (!looksLikePath(provider)) {
    throw new UsageError(`unknown hook provider "${provider}": give ${NO_HOOKS_PROVIDER}, ${TKESTACK_PROVIDER}, or the path of a hook module (e.g. ./hooks.mjs or /etc/tunnel/hooks.js)`);
  }
  return loadHookModule(provider, options);
}

function looksLikePath(spec: string): boolean {
  return isAbsolute(spec) || spec.startsWith('.') || spec.includes('/') || spec.includes('\\') || /\.(c|m)?js$/.test(spec);
}

async function loadHookModule(spec: string, options: ReadonlyMap<string, string>): Promise<AgentHook[]> {
  const path = resolve(process.cwd(), spec);
  const where = path === spec ? `the hook module ${path}` : `the hook module ${spec} (${path})`;
  if (!existsSync(path)) throw new UsageError(`${where} does not exist: give the path of a JavaScript module, absolute or relative to ${process.cwd()}`);
  let module: Record<string, unknown>;
  try {
    module = await import(pathToFileURL(path).href) as Record<string, unknown>;
  } catch (err) {
    throw new UsageError(`${where} cannot be loaded: ${firstLine(err)}; fix the module (it must be JavaScript that Node can import)`, { cause: err });
  }
  let exported = module.default ?? module.hooks;
  // A CommonJS module's exports arrive as `default`.
  if (isRecord(exported) && !('name' in exported) && (exported.default !== undefined || exported.hooks !== undefined)) {
    exported = exported.default ?? exported.hooks;
  }
  if (exported === undefined) {
    throw new UsageError(`${where} exports no hooks: expected ${EXPECTED_EXPORT}; it exports ${describeKeys(module)}`);
  }
  if (typeof exported === 'function') {
    try {
      exported = await (exported as (o: ReadonlyMap<string, string>) => unknown)(options);
    } catch (err) {
      throw new UsageError(`${where}: its hook factory failed: ${firstLine(err)}`, { cause: err });
    }
  }
  return validateHooks(exported, where);
}

/**
 * Checks that `value` is a hook or an array of hooks with distinct names, and returns them.
 * @throws UsageError saying, with `where`, what is wrong.
 */
export function validateHooks(value: unknown, where: string): AgentHook[] {
  const list = Array.isArray(value) ? value as unknown[] : [value];
  const hooks: AgentHook[] = [];
  const names = new Set<string>();
  list.forEach((item, index) => {
    const which = Array.isArray(value) ? `hook #${index + 1}` : 'its hook';
    if (!isRecord(item)) throw new UsageError(`${where}: ${which} is ${describeValue(item)}, not a hook: expected ${EXPECTED_EXPORT}`);
    if (typeof item.name !== 'string' || item.name.trim() === '') throw new UsageError(`${where}: ${which} has no name: give it name: '...'`);
    const name = item.name;
    if (names.has(name)) throw new UsageError(`${where}: two hooks are named "${name}": give each hook its own name`);
    names.add(name);
    for (const fn of ['preStart', 'postStart'] as const) {
      if (item[fn] !== undefined && typeof item[fn] !== 'function') throw new UsageError(`${where}: the hook "${name}" has a ${fn} that is ${describeValue(item[fn])}, not a function`);
    }
    if (item.preStart === undefined && item.postStart === undefined) throw new UsageError(`${where}: the hook "${name}" has neither preStart nor postStart: give it at least one`);
    if (item.failurePolicy !== undefined && !HOOK_FAILURE_POLICIES.includes(item.failurePolicy as never)) {
      throw new UsageError(`${where}: the hook "${name}" has failurePolicy ${JSON.stringify(item.failurePolicy)}: give one of ${HOOK_FAILURE_POLICIES.join(', ')}`);
    }
    if (item.timeoutMs !== undefined && !(typeof item.timeoutMs === 'number' && Number.isFinite(item.timeoutMs) && item.timeoutMs > 0)) {
      throw new UsageError(`${where}: the hook "${name}" has timeoutMs ${JSON.stringify(item.timeoutMs)}: give a positive number of milliseconds`);
    }
    hooks.push(item as unknown as AgentHook);
  });
  if (hooks.length === 0) throw new UsageError(`${where} gives an empty list of hooks: expected ${EXPECTED_EXPORT}`);
  return hooks;
}

/**
 * The managed cluster's KubeConfig for hooks: from `kubeconfig` (the agent's
 * `--managed-kubeconfig`) if given, else from the pod's service account when the agent runs
 * in a pod, else undefined (hooks that need it fail with requireManaged's message).
 * @throws UsageError when the kubeconfig cannot be read or names no usable server.
 */
export function loadManagedKubeConfig(kubeconfig?: string): KubeConfig | undefined {
  if (kubeconfig) return loadKube({ kubeconfig }).config;
  if (runningInCluster()) return loadKube({ inCluster: true }).config;
  return undefined;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describeKeys(module: Record<string, unknown>): string {
  const keys = Object.keys(module);
  return keys.length === 0 ? 'nothing' : keys.map((k) => `${k} (${describeValue(module[k])})`).join(', ');
}

function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0];
}
