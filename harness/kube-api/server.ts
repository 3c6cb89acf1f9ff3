/**
 * The HTTPS listener: TLS with the double's serving certificate, client certificates asked for
 * and checked against the client CA (optional, as on kube-apiserver), then for each request
 * authentication (401), RBAC (403), dispatch, and a JSON answer. Every request is recorded.
 * stop() closes the listener and every connection (watches end); start() listens again on the
 * same port.
 */
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { ApiError, unauthorized } from './status.js';
import { parseRequestInfo } from './request-info.js';
import { attributesOf, type Authorizer } from './rbac.js';
import type { Authenticator } from './auth.js';
import type { ApiHandler, Reply } from './api-handler.js';
import type { WatchStream } from './watch.js';

/** kube-apiserver's --max-request-bytes default for JSON bodies. */
const MAX_REQUEST_BYTES = 3 * 1024 * 1024;
const HOST = '127.0.0.1';

export interface RequestRecord {
  method: string;
  path: string;
  user?: string;
  status: number;
}

export interface TlsMaterial {
  certPem: string;
  keyPem: string;
  clientCaPem: string;
}

export class ApiListener {
  private server: https.Server | undefined;
  private readonly sockets = new Set<Socket>();
  readonly requests: RequestRecord[] = [];
  private boundPort = 0;

  constructor(
    private readonly tls: TlsMaterial,
    private readonly authenticator: Authenticator,
    private readonly authorizer: Authorizer,
    private readonly handler: ApiHandler,
    private readonly watches: Set<WatchStream>,
    private readonly now: () => Date,
  ) {}

  get port(): number {
    return this.boundPort;
  }

  async start(port: number = this.boundPort): Promise<void> {
    if (this.server) return;
    const server = https.createServer({
      cert: this.tls.certPem,
      key: this.tls.keyPem,
      ca: this.tls.clientCaPem,
      requestCert: true,
      rejectUnauthorized: false,
    }, (req, res) => void this.serve(req, res));
    server.on('connection', (socket: Socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
    server.listen(port, HOST);
    await once(server, 'listening');
    this.boundPort = (server.address() as AddressInfo).port;
    this.server = server;
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const watch of [...this.watches]) watch.end();
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
    server.closeAllConnections();
    await closed;
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', `https://${HOST}:${this.boundPort}`);
    const record: RequestRecord = { method: req.method ?? 'GET', path: `${url.pathname}${url.search}`, status: 0 };
    const respond = (status: number) => {
      record.status = status;
      this.requests.push(record);
    };
    try {
      const body = await readBody(req);
      const user = this.authenticator.authenticateRequest(req, this.now());
      if (!user) throw unauthorized();
      record.user = user.username;
      const info = parseRequestInfo(record.method, url);
      const attributes = attributesOf(user, info);
      if (!this.authorizer.authorize(attributes)) throw this.authorizer.forbidden(attributes);
      const reply = await this.handler.handle(req, res, url, info, user, body);
      send(res, reply, respond);
    } catch (err) {
      const error = err instanceof ApiError ? err : new ApiError(500, 'InternalError', `Internal error occurred: ${(err as Error).message}`, { causes: [{ message: (err as Error).message }] });
      if (res.headersSent) {
        res.destroy();
        return;
      }
      send(res, { code: error.code, body: error.toStatus() }, respond);
    }
  }
}

function send(res: ServerResponse, reply: Reply, respond: (status: number) => void): void {
  if ('streamed' in reply) {
    respond(res.statusCode);
    return;
  }
  respond(reply.code);
  if ('text' in reply) {
    res.writeHead(reply.code, { 'Content-Type': 'text/plain; charset=utf-8', 'X-Content-Type-Options': 'nosniff' });
    res.end(reply.text);
    return;
  }
  const text = JSON.stringify(reply.body);
  res.writeHead(reply.code, { 'Content-Type': reply.contentType ?? 'application/json', 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-cache, private' });
  res.end(text);
}

/** The request body as text; 413 past the API server's limit. */
async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const buffer = chunk as Buffer;
    size += buffer.length;
    if (size > MAX_REQUEST_BYTES) throw new ApiError(413, 'RequestEntityTooLarge', `Request entity too large: limit is ${MAX_REQUEST_BYTES}`);
    chunks.push(buffer);
  }
  return Buffer.concat(chunks);
}
