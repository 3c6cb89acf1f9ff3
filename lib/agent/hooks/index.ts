/**
 * Agent start hooks: what a hook is (hooks.ts), running a phase of them under their failure
 * policies (run-hooks.ts), providers and `--hook-option` values from flags (load.ts), and the
 * tkestack provider (tkestack.ts).
 */
export * from './hooks.js';
export * from './run-hooks.js';
export * from './load.js';
export {
  TKESTACK_PROVIDER, TKESTACK_OPTIONS, CLUSTER_CREDENTIALS, CLUSTER_NAME_LABEL,
  tkestackHook, tkestackHooks, reportClusterCredential,
  type TkestackHookOptions, type CredentialReport, type ReportParams, type LookupState,
} from './tkestack.js';
