/**
 * /healthz, /readyz and /metrics on a plain HTTP port, as the reference serves them, and
 * the admin endpoints under /debug/ (JSON lists of what the process holds).
 */
import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { MetricsRegistry } from './metrics.js';

export interface ReadinessCheck {
  name: string;
  /** Undefined when ready, else the reason for operators. */
  check(): string | undefined;
}

export interface HealthServerOptions {
  host: string;
  port: number;
  readiness: ReadinessCheck[];
  metrics: MetricsRegistry;
  /** GET /debug/NAME answers with what `list(limit)` returns, as JSON. */
  debug?: Record<string, (limit: number) => unknown>;
}

/** How many items a /debug/ list holds unless ?limit= says otherwise, and at most. */
export const DEFAULT_DEBUG_LIMIT = 100;
export const MAX_DEBUG_LIMIT = 10_000;

/** ?limit=N of a /debug/ request, or a reason it is not one. */
export function debugLimit(url: URL): number | string {
  const value = url.searchParams.get('limit');
  if (value === null) return DEFAULT_DEBUG_LIMIT;
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > MAX_DEBUG_LIMIT) return `limit=${value} is not a whole number from 1 to ${MAX_DEBUG_LIMIT}`;
  return n;
}

export class HealthServer {
  private readonly server: http.Server;

  constructor(private readonly options: HealthServerOptions) {
    this.server = http.createServer((req, res) => this.handle(req, res));
  }

  async listen(): Promise<AddressInfo> {
    this.server.listen(this.options.port, this.options.host);
    await Promise.race([once(this.server, 'listening'), once(this.server, 'error').then(([err]) => {
      throw new Error(`cannot listen for health checks on ${this.options.host}:${this.options.port}: ${(err as Error).message}`);
    })]);
    return this.server.address() as AddressInfo;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://health');
    switch (url.pathname) {
      case '/healthz':
        this.reply(res, 200, 'ok');
        return;
      case '/readyz':
      case '/ready': {
        const failures = this.options.readiness.map((c) => [c.name, c.check()] as const);
        const failed = failures.filter(([, reason]) => reason !== undefined);
        if (url.searchParams.has('verbose') || failed.length > 0) {
          const lines = failures.map(([name, reason]) => reason === undefined ? `[+]${name} ok` : `[-]${name} failed: ${reason}`);
          this.reply(res, failed.length > 0 ? 503 : 200, `[+]ping ok\n${lines.join('\n')}\n`);
        } else {
          this.reply(res, 200, 'ok');
        }
        return;
      }
      case '/metrics':
        res.writeHead(200, { 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8' });
        res.end(this.options.metrics.render());
        return;
      default:
        if (url.pathname.startsWith('/debug/')) {
          this.debug(url, req, res);
          return;
        }
        this.reply(res, 404, `not found: ${url.pathname} (try /healthz, /readyz, /metrics${this.debugPaths().map((p) => `, ${p}`).join('')})`);
    }
  }

  private debugPaths(): string[] {
    return Object.keys(this.options.debug ?? {}).map((name) => `/debug/${name}`);
  }

  private debug(url: URL, req: http.IncomingMessage, res: http.ServerResponse): void {
    const list = this.options.debug?.[url.pathname.slice('/debug/'.length)];
    if (!list) {
      this.reply(res, 404, `not found: ${url.pathname} (the admin endpoints here: ${this.debugPaths().join(', ') || 'none'})`);
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { 'Content-Type': 'text/plain; charset=utf-8', Allow: 'GET' });
      res.end(`${url.pathname} answers GET only\n`);
      return;
    }
    const limit = debugLimit(url);
    if (typeof limit === 'string') {
      this.reply(res, 400, `${limit}\n`);
      return;
    }
    res.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(JSON.stringify(list(limit), null, 2) + '\n');
  }

  private reply(res: http.ServerResponse, status: number, body: string): void {
    res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8' });
    res.end(body);
  }
}
