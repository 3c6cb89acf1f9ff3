/**
 * One request (or upgrade) to an upstream and its answer back, as a proxy forwards them
 * (RFC 9110 §7.6): hop-by-hop fields (Connection and what it names, Keep-Alive, TE, Trailer,
 * Transfer-Encoding, Upgrade, Proxy-*) stay on their hop, Via is added, and bodies stream
 * both ways as they come, so a watch or a long poll sees each event when the upstream sends
 * it. An upgrade (kubectl exec and port-forward over SPDY or WebSocket) becomes a byte pipe
 * once the upstream answers 101.
 */
import http from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import type { Upstream } from './routes.js';

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade']);
/** Set by the proxy from what it verified; a caller's own value is dropped. */
export const CLUSTER_HEADER = 'x-tunnel-cluster';
const VIA = '1.1 tunnel-server';
/** How long connecting to an upstream (TCP and TLS) may take; an open response is never cut. */
const CONNECT_TIMEOUT_MS = 10_000;

export interface ForwardContext {
  upstream: Upstream;
  agent: http.Agent;
  /** The path and query to ask the upstream for. */
  path: string;
  /** The verified cluster of the caller, passed upstream in X-Tunnel-Cluster. */
  cluster?: string;
  /** The caller's address, appended to X-Forwarded-For (none for pushed connections). */
  remoteAddress?: string;
  proto: 'https' | 'http';
}

/** An upstream failed before it answered: what the caller is told. */
export class UpstreamError extends Error {
  constructor(message: string, readonly status: number) {
    super(message);
    this.name = 'UpstreamError';
  }
}

/** An agent per upstream keeps connections to it open between requests. */
export function upstreamAgent(upstream: Upstream): http.Agent {
  if (upstream.url.protocol === 'http:') return new http.Agent({ keepAlive: true });
  return new https.Agent({ keepAlive: true, ca: upstream.ca, servername: upstream.serverName });
}

/** A header list without hop-by-hop fields, flat as rawHeaders are: name, value, name, value ... */
export function endToEndHeaders(raw: string[], keep: (name: string) => boolean = () => false): string[] {
  const named = new Set<string>();
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i].toLowerCase() === 'connection') for (const token of raw[i + 1].split(',')) named.add(token.trim().toLowerCase());
  }
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    if ((HOP_BY_HOP.has(name) || named.has(name)) && !keep(name)) continue;
    out.push(raw[i], raw[i + 1]);
  }
  return out;
}

function appendVia(headers: string[]): void {
  headers.push('Via', VIA);
}

/** The request's headers as they go upstream. */
function upstreamHeaders(req: http.IncomingMessage, ctx: ForwardContext, upgrade: boolean): string[] {
  const headers: string[] = [];
  const raw = endToEndHeaders(req.rawHeaders);
  let forwardedFor: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    if (name === 'host' || name === CLUSTER_HEADER) continue;
    if (name === 'x-forwarded-for') {
      forwardedFor = forwardedFor ? `${forwardedFor}, ${raw[i + 1]}` : raw[i + 1];
      continue;
    }
    headers.push(raw[i], raw[i + 1]);
  }
  headers.push('Host', ctx.upstream.url.host);
  if (ctx.remoteAddress) forwardedFor = forwardedFor ? `${forwardedFor}, ${ctx.remoteAddress}` : ctx.remoteAddress;
  if (forwardedFor) headers.push('X-Forwarded-For', forwardedFor);
  if (req.headers.host) headers.push('X-Forwarded-Host', req.headers.host);
  headers.push('X-Forwarded-Proto', ctx.proto);
  if (ctx.cluster) headers.push('X-Tunnel-Cluster', ctx.cluster);
  appendVia(headers);
  if (upgrade) headers.push('Connection', 'Upgrade', 'Upgrade', req.headers.upgrade ?? '');
  return headers;
}

function openUpstream(req: http.IncomingMessage, ctx: ForwardContext, upgrade: boolean): http.ClientRequest {
  const { url } = ctx.upstream;
  const request = (url.protocol === 'https:' ? https : http).request({
    host: url.hostname.replace(/^\[|\]$/g, ''),
    port: url.port || (url.protocol === 'https:' ? 443 : 80),
    method: req.method,
    path: ctx.path,
    headers: upstreamHeaders(req, ctx, upgrade),
    agent: ctx.agent,
  });
  request.on('socket', (socket) => {
    if (!socket.connecting) return;
    const timer = setTimeout(() => request.destroy(new UpstreamError(`no connection to ${url.origin} within ${CONNECT_TIMEOUT_MS} ms`, 504)), CONNECT_TIMEOUT_MS);
    socket.once(url.protocol === 'https:' ? 'secureConnect' : 'connect', () => clearTimeout(timer));
    socket.once('close', () => clearTimeout(timer));
  });
  return request;
}

/** The upstream request, or undefined after rejecting: Node refuses some header values (control characters) at once. */
function openOrReject(req: http.IncomingMessage, ctx: ForwardContext, upgrade: boolean, reject: (err: UpstreamError) => void): http.ClientRequest | undefined {
  try {
    return openUpstream(req, ctx, upgrade);
  } catch (err) {
    reject(new UpstreamError(`the request cannot be forwarded: ${(err as Error).message}`, 400));
    return undefined;
  }
}

function upstreamFailure(err: Error, upstream: Upstream): UpstreamError {
  if (err instanceof UpstreamError) return err;
  const code = (err as NodeJS.ErrnoException).code;
  const what = code ? `${code} (${err.message})` : err.message;
  return new UpstreamError(`the upstream ${upstream.url.origin} failed: ${what}`, 502);
}

/**
 * Sends `req` upstream and the answer back on `res`. Resolves with the upstream's status,
 * or rejects with an UpstreamError before anything was written to `res`.
 */
export function forwardRequest(req: http.IncomingMessage, res: http.ServerResponse, ctx: ForwardContext): Promise<number> {
  return new Promise((resolve, reject) => {
    const upstreamReq = openOrReject(req, ctx, false, reject);
    if (!upstreamReq) return;
    let answered = false;
    upstreamReq.on('response', (upstreamRes) => {
      answered = true;
      const headers = endToEndHeaders(upstreamRes.rawHeaders);
      appendVia(headers);
      res.writeHead(upstreamRes.statusCode ?? 502, upstreamRes.statusMessage, headers);
      // Each chunk goes out as it comes: watch events, long polls, logs -f.
      res.flushHeaders();
      upstreamRes.pipe(res);
      upstreamRes.on('error', () => res.destroy());
      upstreamRes.on('aborted', () => res.destroy());
      resolve(upstreamRes.statusCode ?? 502);
    });
    upstreamReq.on('error', (err) => {
      if (answered) res.destroy();
      else reject(upstreamFailure(err, ctx.upstream));
    });
    // The caller went away: so does the upstream request (a watch holds nothing after its client).
    res.on('close', () => {
      if (!res.writableFinished) upstreamReq.destroy();
    });
    req.pipe(upstreamReq);
  });
}

/**
 * Forwards an upgrade request; once the upstream answers 101 the two sockets are joined.
 * An upstream that refuses the upgrade has its answer relayed as it is. Resolves with the
 * upstream's status; rejects with an UpstreamError before anything was written to `socket`.
 */
export function forwardUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer, ctx: ForwardContext): Promise<number> {
  return new Promise((resolve, reject) => {
    const upstreamReq = openOrReject(req, ctx, true, reject);
    if (!upstreamReq) return;
    let answered = false;
    upstreamReq.on('upgrade', (upstreamRes, upstreamSocket, upstreamHead) => {
      answered = true;
      const headers = endToEndHeaders(upstreamRes.rawHeaders, (name) => name === 'upgrade');
      appendVia(headers);
      headers.push('Connection', 'Upgrade');
      socket.write(responseHead(101, upstreamRes.statusMessage, headers));
      if (upstreamHead.length > 0) socket.write(upstreamHead);
      if (head.length > 0) upstreamSocket.write(head);
      upstreamSocket.pipe(socket);
      socket.pipe(upstreamSocket);
      const close = () => {
        upstreamSocket.destroy();
        socket.destroy();
      };
      upstreamSocket.on('error', close);
      socket.on('error', close);
      upstreamSocket.on('close', close);
      socket.on('close', close);
      resolve(101);
    });
    upstreamReq.on('response', (upstreamRes) => {
      answered = true;
      // The body arrives decoded; without its framing it runs until the connection closes.
      const headers = endToEndHeaders(upstreamRes.rawHeaders);
      appendVia(headers);
      headers.push('Connection', 'close');
      socket.write(responseHead(upstreamRes.statusCode ?? 502, upstreamRes.statusMessage, headers));
      upstreamRes.pipe(socket);
      // Either side going away ends the other: nothing else is carried on this connection.
      upstreamRes.on('error', () => socket.destroy());
      upstreamRes.on('aborted', () => socket.destroy());
      socket.on('close', () => upstreamReq.destroy());
      resolve(upstreamRes.statusCode ?? 502);
    });
    upstreamReq.on('error', (err) => {
      if (answered) socket.destroy();
      else reject(upstreamFailure(err, ctx.upstream));
    });
    socket.on('close', () => {
      if (!answered) upstreamReq.destroy();
    });
    req.pipe(upstreamReq);
  });
}

/** A response head written on a raw socket (after an upgrade request). */
export function responseHead(status: number, message: string | undefined, headers: string[]): string {
  let text = `HTTP/1.1 ${status} ${message || http.STATUS_CODES[status] || ''}\r\n`;
  for (let i = 0; i + 1 < headers.length; i += 2) text += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return `${text}\r\n`;
}
