/**
 * The connected agents. An agent may hold several streams to this server (briefly, while it
 * replaces one); as the reference does, dials go to its oldest stream.
 */
import { BehaviorSubject } from 'rxjs';
import type { Backend } from './backend.js';
import { hostKeys } from '../wire/agent-identifiers.js';

export class AgentRegistry {
  private readonly byAgent = new Map<string, Backend[]>();
  /** The number of connected agents, for readiness and metrics. */
  readonly agentCount$ = new BehaviorSubject<number>(0);

  add(backend: Backend): void {
    const list = this.byAgent.get(backend.agentID) ?? [];
    list.push(backend);
    this.byAgent.set(backend.agentID, list);
    this.agentCount$.next(this.byAgent.size);
  }

  remove(backend: Backend): void {
    const list = this.byAgent.get(backend.agentID);
    if (!list) return;
    const rest = list.filter((b) => b !== backend);
    if (rest.length > 0) this.byAgent.set(backend.agentID, rest);
    else this.byAgent.delete(backend.agentID);
    this.agentCount$.next(this.byAgent.size);
  }

  /** The stream each agent's dials go to: its oldest. */
  primaries(): Backend[] {
    return [...this.byAgent.values()].map((list) => list[0]);
  }

  all(): Backend[] {
    return [...this.byAgent.values()].flat();
  }

  /** Agents whose host, ipv4 or ipv6 identifier equals `host` exactly. */
  withHost(host: string): Backend[] {
    return this.primaries().filter((b) => hostKeys(b.identifiers).includes(host));
  }

  get size(): number {
    return this.byAgent.size;
  }
}
