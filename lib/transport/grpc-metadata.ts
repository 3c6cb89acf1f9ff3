/**
 * What gRPC over node:http2 needs beside the framing: metadata (custom headers), status
 * codes and their messages, and keepalive pings.
 */
import type http2 from 'node:http2';
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http2';

/** The gRPC status codes this project sends or names in messages. */
export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

export function statusName(code: number): string {
  return Object.entries(GrpcStatus).find(([, value]) => value === code)?.[0] ?? `code ${code}`;
}

/** grpc-message is percent-encoded outside printable ASCII (and '%' itself). */
export function encodeGrpcMessage(text: string): string {
  return Array.from(Buffer.from(text, 'utf8'), (b) => (b >= 0x20 && b <= 0x7e && b !== 0x25 ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`)).join('');
}

export function decodeGrpcMessage(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** Whether a header is custom metadata: not one HTTP/2 or gRPC itself defines, nor binary. */
function isMetadata(key: string): boolean {
  return !(key.startsWith(':') || key.startsWith('grpc-') || key === 'content-type' || key === 'te' || key === 'user-agent' || key.endsWith('-bin'));
}

/**
 * Custom metadata of a call: lower-case keys, each with its values in order. Shaped like
 * grpc-js's Metadata (get returns every value) so code that reads it serves both.
 */
export class Metadata {
  private readonly values = new Map<string, string[]>();

  get(key: string): string[] {
    return this.values.get(key.toLowerCase()) ?? [];
  }

  set(key: string, value: string): void {
    this.values.set(key.toLowerCase(), [value]);
  }

  /** From a request's raw headers (name, value, name, value ...), repeated keys kept apart. */
  static fromRawHeaders(raw: string[]): Metadata {
    const md = new Metadata();
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const key = raw[i].toLowerCase();
      if (!isMetadata(key)) continue;
      const list = md.values.get(key) ?? [];
      list.push(raw[i + 1]);
      md.values.set(key, list);
    }
    return md;
  }

  /** From parsed headers (a response's), where repeated keys came joined or as arrays. */
  static fromHeaders(headers: IncomingHttpHeaders): Metadata {
    const md = new Metadata();
    for (const [key, value] of Object.entries(headers)) {
      if (value === undefined || !isMetadata(key)) continue;
      md.values.set(key, Array.isArray(value) ? value : [String(value)]);
    }
    return md;
  }

  toHeaders(): OutgoingHttpHeaders {
    const headers: OutgoingHttpHeaders = {};
    for (const [key, list] of this.values) headers[key] = list.length === 1 ? list[0] : list;
    return headers;
  }
}

/**
 * How often a gRPC client pings its server. grpc-go servers refuse pings that come more often
 * than their enforcement policy allows, with GOAWAY ENHANCE_YOUR_CALM ("too_many_pings")
 * after a few: the reference server allows one every 30 s on its agent port and, with
 * grpc-go's default policy, one every 5 minutes on its frontend. Timers drift by a few ms,
 * so each interval stays well clear of its limit.
 */
export const KEEPALIVE = {
  /** Agents towards their servers: twice the reference agent port's 30 s minimum. */
  agentMs: 60_000,
  /** Frontend clients: above grpc-go's 5-minute default, below common load balancers' idle timeouts (AWS NLB: 350 s). */
  frontendMs: 330_000,
  /** Servers towards their clients (grpc-go clients take any rate). */
  serverMs: 30_000,
} as const;
const KEEPALIVE_TIME_MS = KEEPALIVE.serverMs;
const KEEPALIVE_TIMEOUT_MS = 15_000;

/**
 * Pings the peer every `intervalMs` and destroys the session when an answer takes longer
 * than `timeoutMs`: a peer behind a NAT or load balancer that drops silently is noticed.
 */
export function keepAlive(session: http2.Http2Session, onDead: (reason: string) => void, intervalMs: number = KEEPALIVE_TIME_MS, timeoutMs = KEEPALIVE_TIMEOUT_MS): void {
  const interval = setInterval(() => {
    if (session.destroyed || session.closed) return;
    const timer = setTimeout(() => {
      onDead(`no answer to a keepalive ping within ${timeoutMs} ms`);
      session.destroy();
    }, timeoutMs);
    timer.unref();
    const sent = session.ping((err) => {
      clearTimeout(timer);
      if (err && !session.destroyed) session.destroy();
    });
    if (!sent) clearTimeout(timer);
  }, intervalMs);
  interval.unref();
  session.once('close', () => clearInterval(interval));
}
