/**
 * Jittered exponential backoff: by default 1 s, x1.5, capped at 10 s,
 * +-10 % jitter, like the reference agent's sync loop.
 */
export interface BackoffOptions {
  initialMs?: number;
  factor?: number;
  maxMs?: number;
  jitter?: number;
}

export class Backoff {
  private attempt = 0;
  private readonly initialMs: number;
  private readonly factor: number;
  private readonly maxMs: number;
  private readonly jitter: number;

  constructor(options: BackoffOptions = {}) {
    this.initialMs = options.initialMs ?? 1_000;
    this.factor = options.factor ?? 1.5;
    this.maxMs = options.maxMs ?? 10_000;
    this.jitter = options.jitter ?? 0.1;
  }

  /** The delay before the next attempt; each call lengthens the one after. */
  next(): number {
    const base = Math.min(this.maxMs, this.initialMs * this.factor ** this.attempt++);
    return Math.round(base * (1 + this.jitter * (2 * Math.random() - 1)));
  }

  reset(): void {
    this.attempt = 0;
  }
}
