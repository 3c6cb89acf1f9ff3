/**
 * The HTTP-CONNECT frontend (kube-apiserver's `HTTPConnect` egress, curl --proxy): over mTLS
 * TCP or a plain unix socket. The dial address is the CONNECT request-target (the Host
 * header is ignored: kube-apiserver sends `Host: 127.0.0.1`). The 200 goes out only after the
 * agent's DIAL_RSP succeeded, and nothing follows it until the client speaks: Go clients
 * reject buffered bytes after the response head.
 */
import http from 'node:http';
import https from 'node:https';
import { constants, randomBytes } from 'node:crypto';
import type net from 'node:net';
import { TLSSocket, type SecureContextOptions } from 'node:tls';
import type { Duplex } from 'node:stream';
import { DialError } from '../mux/dialing-mux.js';
import { isOrdinaryClose, splice } from '../mux/splice.js';
import { ERR_NO_AGENT } from '../wire/protocol.js';
import type { TlsSource } from '../pki/tls-source.js';
import type { Logger } from '../observe/log.js';
import type { Dial } from './dial-router.js';
import { followTlsSource } from '../transport/tls-reload.js';
import { describePeer, peerIdentity } from '../transport/peer-identity.js';
import type { ClientPolicy } from './client-policy.js';
import { DialLimitError, clientKey } from './limits.js';

const ESTABLISHED = 'HTTP/1.1 200 Connection Established\r\n\r\n';
/** A CONNECT target: host:port, [v6]:port. */
const AUTHORITY = /^(\[[0-9a-fA-F:.]+\]|[^\s/:@[\]]+):(\d{1,5})$/;

export interface HttpConnectFrontendOptions {
  dial: Dial;
  log: Logger;
  /** Counts each CONNECT outcome by label (ok, no_agent, dial_error, ...). */
  onOutcome?: (outcome: string) => void;
  /** Who may dial what; everyone, everything when absent. */
  policy?: ClientPolicy;
  /** How long a client has for its TLS handshake, and for its request head after it (slow or silent clients are cut off). */
  limits?: ClientTimeLimits;
  /** TLS session resumption for clients that offer it (mTLS port only); off when absent. */
  resumption?: TlsResumption;
  /** Told of each completed TLS handshake on the mTLS port: a resumed session, or a full handshake. */
  onHandshake?: (resumed: boolean) => void;
  /** TCP keepalive of the client sockets, in ms after the last packet (0 or absent: off). */
  keepAliveMs?: number;
}

export interface TlsResumption {
  /** How long a session may be resumed after its full handshake. */
  lifetimeSeconds: number;
}

/** The default of --tls-resumption-lifetime. */
export const DEFAULT_TLS_RESUMPTION_LIFETIME_S = 300;

export interface ClientTimeLimits {
  handshakeMs: number;
  requestHeadMs: number;
}

/** The defaults of --handshake-timeout and --request-head-timeout. */
export const DEFAULT_CLIENT_TIME_LIMITS: ClientTimeLimits = { handshakeMs: 10_000, requestHeadMs: 10_000 };

/**
 * Server options that bound a client's handshake and request head. Node checks request
 * heads on a timer (every 30 s by default, so a 10 s limit took up to 40 s); it runs every
 * second here, or a quarter of the limit when that is shorter.
 */
export function clientTimeOptions(limits: ClientTimeLimits): { handshakeTimeout: number; connectionsCheckingInterval: number } {
  return { handshakeTimeout: limits.handshakeMs, connectionsCheckingInterval: Math.max(50, Math.min(1_000, Math.floor(limits.requestHeadMs / 4))) };
}

/** Error response with the reference's exact status line and body. */
function errorResponse(status: number, body: string, extraHeaders = ''): string {
  return `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n${extraHeaders}Content-Type: text/plain; charset=utf-8\r\n\r\n${body}`;
}

/** Maps a failed dial to the status the reference answers with. */
export function dialFailureResponse(err: unknown): { status: number; response: string; outcome: string } {
  if (err instanceof DialError && err.message === ERR_NO_AGENT) {
    return {
      status: 500,
      outcome: 'no_agent',
      response: `HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\ncurrently no tunnels available: ${ERR_NO_AGENT}`,
    };
  }
  const text = (err as Error).message ?? String(err);
  if (err instanceof DialLimitError) {
    return { status: err.status, outcome: 'limited', response: errorResponse(err.status, `${text}\n`, `${err.status === 429 ? 'Retry-After: 1\r\n' : ''}Connection: close\r\n`) };
  }
  if (err instanceof DialError && err.kind === 'timeout') {
    return { status: 504, outcome: 'backend_dial_timeout', response: errorResponse(504, `Backend dial timeout: ${text}\r\n`, 'Connection: close\r\n') };
  }
  if (err instanceof DialError && err.kind === 'closed') {
    return { status: 502, outcome: 'backend_close', response: errorResponse(502, `Backend context error: ${text}\r\n`, 'Connection: close\r\n') };
  }
  const status = /timeout|deadline exceeded/i.test(text) ? 504 : /too many open files/i.test(text) ? 503 : 502;
  return { status, outcome: 'error_response', response: errorResponse(status, text, 'Connection: close\r\n') };
}

function handleConnect(options: HttpConnectFrontendOptions, req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
  const { log } = options;
  socket.pause();
  socket.on('error', (err) => log.debug('frontend socket error', { err }));
  const address = req.url ?? '';
  if (!AUTHORITY.test(address)) {
    options.onOutcome?.('bad_request');
    socket.end(errorResponse(400, `bad CONNECT target "${address}": expected host:port\n`, 'Connection: close\r\n'));
    return;
  }
  const expired = expiredResumption(socket);
  if (expired) {
    options.onOutcome?.('forbidden');
    log.info('CONNECT refused', { address, reason: expired });
    socket.end(errorResponse(403, `${expired}\n`, 'Connection: close\r\n'));
    return;
  }
  const peer = peerIdentity(socket);
  const refusal = options.policy?.(peer, address);
  if (refusal) {
    options.onOutcome?.('forbidden');
    log.warn('CONNECT refused', { address, certificate: describePeer(peer), reason: refusal });
    socket.end(errorResponse(403, `${refusal}\n`, 'Connection: close\r\n'));
    return;
  }
  const abort = new AbortController();
  const onClose = () => abort.abort();
  socket.once('close', onClose);
  if (options.keepAliveMs && 'setKeepAlive' in socket) (socket as net.Socket).setKeepAlive(true, options.keepAliveMs);
  options.dial(address, { signal: abort.signal, client: clientKey(peer), frontend: 'http-connect' }).then((conn) => {
    socket.off('close', onClose);
    if (socket.destroyed) {
      conn.destroy();
      return;
    }
    options.onOutcome?.('ok');
    socket.write(ESTABLISHED);
    if (head.length > 0) conn.write(head);
    splice(conn, socket, (err) => {
      if (!isOrdinaryClose(err)) log.debug('tunneled connection failed', { address, err });
    });
  }, (err: unknown) => {
    socket.off('close', onClose);
    const failure = dialFailureResponse(err);
    options.onOutcome?.(failure.outcome);
    // Limit refusals are logged by the limiter, at a rate a dial storm cannot flood.
    if (!(err instanceof DialLimitError)) log.info('CONNECT failed', { address, status: failure.status, reason: (err as Error).message });
    if (!socket.destroyed) socket.end(failure.response);
  });
}

/**
 * Why a resumed TLS session may not be used: its client certificate, verified at the
 * session's full handshake, has expired since. Undefined for full handshakes and for
 * sessions whose certificate is still valid.
 */
function expiredResumption(socket: Duplex): string | undefined {
  if (!(socket instanceof TLSSocket) || !socket.isSessionReused()) return undefined;
  const validTo = socket.getPeerCertificate(false)?.valid_to;
  if (validTo === undefined || Date.parse(validTo) > Date.now()) return undefined;
  return `the client certificate of this resumed TLS session expired at ${new Date(Date.parse(validTo)).toISOString()}: connect again without the session (a full handshake with a valid certificate)`;
}

function attach(server: http.Server, options: HttpConnectFrontendOptions): void {
  server.on('connect', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => handleConnect(options, req, socket, head));
  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    options.onOutcome?.('method_not_allowed');
    res.writeHead(405, { 'Content-Type': 'text/plain; charset=utf-8', Connection: 'close' });
    res.end(`this proxy only supports CONNECT passthrough, not ${req.method}\n`);
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    const late = err.code === 'ERR_HTTP_REQUEST_TIMEOUT';
    // Every refused request is counted and said, as the ones refused after parsing are.
    options.onOutcome?.(late ? 'request_timeout' : 'bad_request');
    options.log.info(late ? 'a frontend client did not send its request head in time' : 'refused a malformed request from a frontend client', { err: err.code ?? err.message });
    if (!socket.writable) socket.destroy();
    else if (late) socket.end(`HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nthe CONNECT request did not arrive within ${server.headersTimeout} ms\n`);
    else socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nmalformed HTTP request\n');
  });
  // Tunnels live as long as their peers want; only the request head has a deadline.
  server.requestTimeout = 0;
  server.headersTimeout = (options.limits ?? DEFAULT_CLIENT_TIME_LIMITS).requestHeadMs;
}

export function createMtlsConnectServer(tls: TlsSource, options: HttpConnectFrontendOptions): https.Server {
  const { key, cert, ca } = tls.current();
  // Every tunneled connection is a TLS connection of its own here, so handshakes are most of
  // this frontend's cost. Stateless session tickets add to each full handshake (OpenSSL
  // serializes and encrypts the session, client certificate included) and pay off only for
  // clients that resume: kube-apiserver's egress dialer keeps no session cache, so they are
  // off unless resumption is asked for. Under TLS 1.3 OpenSSL still sends two stateful
  // tickets (session ids); Node offers no way to stop those short of OpenSSL's
  // configuration (NumTickets, see docs/performance.md).
  const resumption = options.resumption;
  const context: SecureContextOptions = resumption ? {} : { secureOptions: constants.SSL_OP_NO_TICKET };
  const server = https.createServer({
    key, cert, ca, requestCert: true, rejectUnauthorized: true, ...context,
    ...(resumption ? { sessionTimeout: resumption.lifetimeSeconds } : {}),
    ...clientTimeOptions(options.limits ?? DEFAULT_CLIENT_TIME_LIMITS),
  });
  // A listener here keeps Node from closing the socket itself, handshake timeouts included.
  server.on('tlsClientError', (err, socket) => {
    options.log.debug('frontend TLS handshake failed', { err: err.message });
    socket.destroy();
  });
  const { onHandshake } = options;
  if (onHandshake) server.on('secureConnection', (socket: TLSSocket) => onHandshake(socket.isSessionReused()));
  const follower = followTlsSource(server, tls, 'http-connect', options.log, context);
  // A session resumes without the client certificate being checked again: after the trusted
  // CAs (or the server's own certificate) change, no session of before may be resumed.
  const newTicketKeys = resumption ? tls.changes.subscribe(() => server.setTicketKeys(randomBytes(48))) : undefined;
  server.once('close', () => newTicketKeys?.unsubscribe());
  server.once('close', () => follower.unsubscribe());
  attach(server, options);
  return server;
}

export function createPlainConnectServer(options: HttpConnectFrontendOptions): http.Server {
  const server = http.createServer(clientTimeOptions(options.limits ?? DEFAULT_CLIENT_TIME_LIMITS));
  attach(server, options);
  return server;
}
