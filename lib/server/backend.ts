/**
 * One agent stream as the server sees it: who the agent is, what it serves, and the
 * DialingMux that carries its connections.
 */
import type { DialingMux } from '../mux/dialing-mux.js';
import type { AgentIdentifiers } from '../wire/agent-identifiers.js';

export interface Backend {
  readonly agentID: string;
  readonly identifiers: AgentIdentifiers;
  readonly mux: DialingMux;
  readonly connectedAt: Date;
  /** The agent's address, for logs. */
  readonly peer: string;
  /** The agent announced MD_SERVER_DRAIN: it may be sent DRAIN when this server shuts down. */
  readonly takesServerDrain?: boolean;
}

export function isDraining(backend: Backend): boolean {
  return backend.mux.draining;
}
