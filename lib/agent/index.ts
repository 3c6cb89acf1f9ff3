/**
 * The agent role: keeps streams open to the tunnel servers and dials targets for them.
 */
export * from './tunnel-agent.js';
export type { TargetDialerOptions } from './target-dialer.js';
export type { BackoffOptions } from '../common/backoff.js';
