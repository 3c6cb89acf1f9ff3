/**
 * What /readyz checks on a server: enough agents (--ready-min-agents), and not draining.
 * Draining is set by whoever stops the server gracefully, through `Readiness.setDraining`.
 */
import { BehaviorSubject } from 'rxjs';
import type { ReadinessCheck } from './health-server.js';

export class Readiness {
  /** Why the server is draining; undefined while it is not. */
  readonly draining$ = new BehaviorSubject<string | undefined>(undefined);

  /** Marks the server as draining (its /readyz answers 503 with `reason`), or, with undefined, as not. */
  setDraining(reason: string | undefined): void {
    this.draining$.next(reason);
  }

  get draining(): boolean {
    return this.draining$.value !== undefined;
  }

  /** The server's checks: at least `minAgents` agents of `agents()`, and not draining. */
  serverChecks(agents: () => number, minAgents: number): ReadinessCheck[] {
    return [
      { name: 'agents', check: () => agentShortfall(agents(), minAgents) },
      { name: 'draining', check: () => this.draining$.value === undefined ? undefined : `the server is draining: ${this.draining$.value}` },
    ];
  }
}

function agentShortfall(connected: number, wanted: number): string | undefined {
  if (connected >= wanted) return undefined;
  // The reference's words when no agent is there.
  if (connected === 0 && wanted === 1) return 'no connection to any proxy agent';
  return `${connected} of ${wanted} agents connected (--ready-min-agents=${wanted})`;
}
