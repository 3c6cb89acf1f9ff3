/**
 * Limits on the dials of the frontends: open connections and dials per second, per agent
 * and per client, and the dials waiting for an agent's answer, server-wide. A dial over a
 * limit is refused before it reaches an agent, with a DialLimitError that says which limit
 * and what to do; HTTP-CONNECT answers it with 503 (connections, pending dials) or 429
 * (dials per second), gRPC with the text in DIAL_RSP. Refusals are counted, and logged at
 * most once per LOG_INTERVAL_MS for each limit with the number refused meanwhile, so that
 * a dial storm does not flood the log.
 *
 * A client is its certificate's subject (every connection with the same CN and O counts
 * together); the clients of the unix sockets, which have none, count as one client.
 */
import { DialError } from '../mux/dialing-mux.js';
import type { TunnelConnection } from '../mux/tunnel-connection.js';
import type { Logger } from '../observe/log.js';
import { describePeer, type PeerIdentity } from '../transport/peer-identity.js';
import type { Backend } from './backend.js';

export interface DialLimits {
  /** Open and pending connections through one agent (0: no limit). */
  maxConnectionsPerAgent: number;
  /** New dials through one agent per second, with bursts of as many (0: no limit). */
  maxDialsPerSecondPerAgent: number;
  /** Open and pending connections of one client (0: no limit). */
  maxConnectionsPerClient: number;
  maxDialsPerSecondPerClient: number;
  /** Dials waiting for an agent's answer, all agents together (0: no limit). */
  maxPendingDials: number;
}

export const NO_DIAL_LIMITS: DialLimits = {
  maxConnectionsPerAgent: 0, maxDialsPerSecondPerAgent: 0, maxConnectionsPerClient: 0, maxDialsPerSecondPerClient: 0, maxPendingDials: 0,
};

export type LimitName = 'max_pending_dials' | 'max_connections_per_client' | 'max_dials_per_second_per_client' | 'max_connections_per_agent' | 'max_dials_per_second_per_agent';

/** How often each limit's refusals are logged at most. */
export const LOG_INTERVAL_MS = 10_000;

/** A dial refused by a limit; `status` is the HTTP-CONNECT answer (503, or 429 for a rate). */
export class DialLimitError extends DialError {
  override name = 'DialLimitError';
  constructor(message: string, address: string, readonly limit: LimitName, readonly status: 429 | 503) {
    super(message, address, 'refused');
  }
}

/** The client a limit counts a dial for: its certificate's subject, or the unix sockets'. */
export function clientKey(peer: PeerIdentity | undefined): string {
  return peer ? describePeer(peer) : 'unix-socket clients';
}

/** Dials per second with bursts of one second's worth; tokens refill as time passes (no timer). */
class TokenBucket {
  private tokens: number;
  private at = Date.now();

  constructor(private readonly perSecond: number) {
    this.tokens = perSecond;
  }

  /** Whether a token is there now. */
  available(now: number): boolean {
    this.tokens = Math.min(this.perSecond, this.tokens + ((now - this.at) * this.perSecond) / 1000);
    this.at = now;
    return this.tokens >= 1;
  }

  take(): void {
    this.tokens -= 1;
  }

  full(now: number): boolean {
    return this.available(now) && this.tokens >= this.perSecond;
  }
}

interface Account {
  /** Admitted dials not yet failed, and connections not yet closed. */
  connections: number;
  bucket?: TokenBucket;
}

/** What an admitted dial reports back: the connection it opened (counted until it closes), or its failure. */
export interface Admission {
  opened(conn: TunnelConnection): void;
  failed(): void;
}

export interface DialLimiterOptions {
  limits: DialLimits;
  log: Logger;
  /** Called for each refusal, e.g. for a metric. */
  onRefusal?: (limit: LimitName, frontend: string) => void;
}

export class DialLimiter {
  private readonly limits: DialLimits;
  private readonly clients = new Map<string, Account>();
  private readonly agents = new WeakMap<Backend, Account>();
  private pending = 0;
  private readonly logged = new Map<LimitName, { at: number; since: number }>();

  constructor(private readonly options: DialLimiterOptions) {
    this.limits = options.limits;
  }

  /** Whether any limit is set (without, the router skips the limiter). */
  static any(limits: DialLimits): boolean {
    return Object.values(limits).some((n) => n > 0);
  }

  /** Dials admitted and not answered yet. */
  get pendingDials(): number {
    return this.pending;
  }

  /** Admits a dial of `client` through `backend`, or throws the DialLimitError of the first limit it is over. */
  admit(address: string, backend: Backend, client: string, frontend: string): Admission {
    const l = this.limits;
    const now = Date.now();
    const clientAccount = this.account(this.clients.get(client), l.maxDialsPerSecondPerClient);
    this.clients.set(client, clientAccount);
    const agentAccount = this.account(this.agents.get(backend), l.maxDialsPerSecondPerAgent);
    this.agents.set(backend, agentAccount);
    const refuse = (limit: LimitName, status: 429 | 503, text: string, fields: Record<string, unknown>): never => {
      this.refused(limit, frontend, text, { address, ...fields });
      this.forgetIdle(client, clientAccount, now);
      throw new DialLimitError(text, address, limit, status);
    };
    if (l.maxPendingDials > 0 && this.pending >= l.maxPendingDials) {
      refuse('max_pending_dials', 503, `too many pending dials: ${this.pending} dials are waiting for agents' answers (--max-pending-dials=${l.maxPendingDials}); retry later`, {});
    }
    if (l.maxConnectionsPerClient > 0 && clientAccount.connections >= l.maxConnectionsPerClient) {
      refuse('max_connections_per_client', 503, `too many connections of this client (${client}): ${clientAccount.connections} open or dialing (--max-connections-per-client=${l.maxConnectionsPerClient}); close some and retry`, { client });
    }
    if (clientAccount.bucket && !clientAccount.bucket.available(now)) {
      refuse('max_dials_per_second_per_client', 429, `too many dials of this client (${client}): more than ${l.maxDialsPerSecondPerClient} per second (--max-dials-per-second-per-client); retry later`, { client });
    }
    if (l.maxConnectionsPerAgent > 0 && agentAccount.connections >= l.maxConnectionsPerAgent) {
      refuse('max_connections_per_agent', 503, `too many connections through agent ${backend.agentID}: ${agentAccount.connections} open or dialing (--max-connections-per-agent=${l.maxConnectionsPerAgent}); retry later`, { agentID: backend.agentID, client });
    }
    if (agentAccount.bucket && !agentAccount.bucket.available(now)) {
      refuse('max_dials_per_second_per_agent', 429, `too many dials through agent ${backend.agentID}: more than ${l.maxDialsPerSecondPerAgent} per second (--max-dials-per-second-per-agent); retry later`, { agentID: backend.agentID, client });
    }
    clientAccount.bucket?.take();
    agentAccount.bucket?.take();
    clientAccount.connections++;
    agentAccount.connections++;
    this.pending++;
    let answered = false;
    const release = () => {
      clientAccount.connections--;
      agentAccount.connections--;
      this.forgetIdle(client, clientAccount, Date.now());
    };
    const answer = () => {
      if (answered) return false;
      answered = true;
      this.pending--;
      return true;
    };
    return {
      opened: (conn) => {
        if (!answer()) return;
        if (conn.destroyed) release();
        else conn.once('close', release);
      },
      failed: () => {
        if (answer()) release();
      },
    };
  }

  private account(existing: Account | undefined, perSecond: number): Account {
    return existing ?? { connections: 0, bucket: perSecond > 0 ? new TokenBucket(perSecond) : undefined };
  }

  /** A client with nothing open and a full bucket is forgotten (clients come and go). */
  private forgetIdle(client: string, account: Account, now: number): void {
    if (this.clients.get(client) === account && account.connections === 0 && (!account.bucket || account.bucket.full(now))) this.clients.delete(client);
  }

  private refused(limit: LimitName, frontend: string, reason: string, fields: Record<string, unknown>): void {
    this.options.onRefusal?.(limit, frontend);
    const now = Date.now();
    const last = this.logged.get(limit);
    if (last && now - last.at < LOG_INTERVAL_MS) {
      last.since++;
      return;
    }
    this.logged.set(limit, { at: now, since: 0 });
    this.options.log.warn('dial refused: a limit is reached', {
      limit, frontend, ...fields, reason,
      ...(last && last.since > 0 ? { refusedBefore: `${last.since} more since the last such line` } : {}),
    });
  }
}
