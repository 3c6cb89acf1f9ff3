/**
 * Dials through the HTTP-CONNECT frontend of a tunnel server (or of the reference
 * proxy-server), as kube-apiserver's egress selector does: one proxy connection per tunneled
 * connection, over mTLS TCP or a plain unix socket. After `200` the proxy connection itself
 * is the tunneled connection, so the caller gets the raw socket.
 */
import net from 'node:net';
import tls from 'node:tls';
import { DEFAULT_DIAL_TIMEOUT_MS } from '../mux/dialing-mux.js';
import type { TlsMaterial, TlsSource } from '../pki/tls-source.js';
import { DEFAULT_SERVER_PORT } from '../wire/protocol.js';
import { joinHostPort } from '../transport/host-port.js';
import { connectTls } from '../transport/tls-dial.js';

const HEAD_END = Buffer.from('\r\n\r\n');
/** A proxy whose response head is longer than this is not an HTTP-CONNECT proxy. */
const MAX_HEAD_BYTES = 16 * 1024;
/** An error body is for operators; more than this is cut off. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;
const STATUS_LINE = /^HTTP\/1\.[01] (\d{3})(?: ([^\r\n]*))?/;
const CONTENT_LENGTH = /^content-length:\s*(\d+)\s*$/im;
/** Where a dial stands, as error messages put it. */
const PHASES = {
  connect: { during: 'while connecting', stuck: 'still connecting; is the proxy address right and reachable from here?' },
  tls: { during: 'during the TLS handshake', stuck: 'stuck in the TLS handshake; is this the proxy\'s TLS port?' },
  answer: { during: 'before answering', stuck: 'the proxy is waiting for the agent to dial; check that an agent serves the cluster and reaches the target' },
} as const;
type Phase = keyof typeof PHASES;

export interface HttpConnectProxy {
  host?: string;
  port?: number;
  /** A unix socket: plain HTTP, no TLS (host and port are then ignored). */
  path?: string;
  /** Required over TCP: the client certificate and the CA that signs the proxy's certificate. */
  tls?: TlsSource;
  /** The name to verify the proxy's certificate against; the host by default. */
  servername?: string;
  /**
   * Offer the proxy the TLS session of an earlier connection (default true): a proxy that
   * resumes it (tunnel-server --tls-resumption) skips certificates and signatures. One that
   * declines is offered none for a minute.
   */
  resumeSessions?: boolean;
}

export interface HttpConnectDialOptions {
  /** Covers connecting, the TLS handshake and the proxy's answer (which waits for the agent's dial). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** The proxy answered CONNECT with a status other than 200. */
export class ProxyError extends Error {
  constructor(
    readonly proxy: string,
    readonly address: string,
    readonly statusCode: number,
    readonly statusMessage: string,
    readonly body: string,
  ) {
    const detail = body.replace(/\s+/g, ' ').trim();
    super(`proxy ${proxy} refused CONNECT ${address}: ${statusCode} ${statusMessage}${detail ? `: ${detail}` : ''}`);
    this.name = 'ProxyError';
  }
}

/** How error messages name the proxy: `127.0.0.1:10263`, `[::1]:10263` or `unix:/run/proxy.sock`. */
export function httpConnectProxyLabel(proxy: HttpConnectProxy): string {
  if (proxy.path) return `unix:${proxy.path}`;
  return joinHostPort(proxy.host ?? '127.0.0.1', proxy.port ?? DEFAULT_SERVER_PORT);
}

/**
 * Asks the proxy to open `address` (e.g. `c1:443`) and resolves with the proxy connection
 * once it answered 200. Bytes that arrived right after the response head stay readable.
 */
export async function dialHttpConnect(proxy: HttpConnectProxy, address: string, options: HttpConnectDialOptions = {}): Promise<net.Socket> {
  const label = httpConnectProxyLabel(proxy);
  const timeoutMs = options.timeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS;
  if (options.signal?.aborted) throw cancelled(label, address);
  const socket = openProxyConnection(proxy, label);
  return new Promise<net.Socket>((resolve, reject) => {
    let phase: Phase = 'connect';
    let buffered = Buffer.alloc(0);
    let response: ResponseHead | undefined;
    let settled = false;

    const settle = (err: Error | undefined) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      socket.off('readable', onReadable).off('end', onEnd).off('close', onEnd).off('error', onError);
      socket.off('connect', onConnected).off('secureConnect', onConnected);
      if (err) {
        // `err` is the dial's failure. An error the socket still emits on its way out (TLS
        // reports a connection that ended mid-handshake a tick after its 'end') has no one
        // to go to, and unheard it would be an uncaught exception in the caller's process.
        socket.on('error', () => undefined);
        socket.destroy();
        reject(err);
        return;
      }
      if (buffered.length > 0) socket.unshift(buffered);
      resolve(socket);
    };
    const refuse = () => {
      const { statusCode, statusMessage } = response!;
      settle(new ProxyError(label, address, statusCode, statusMessage, errorBody(response!, buffered).toString('utf8')));
    };

    const onConnected = () => {
      phase = 'answer';
      socket.write(`CONNECT ${address} HTTP/1.1\r\nHost: ${address}\r\n\r\n`);
    };
    const onReadable = () => {
      for (let chunk: Buffer | null; (chunk = socket.read() as Buffer | null) !== null;) buffered = Buffer.concat([buffered, chunk]);
      if (!response) {
        const end = buffered.indexOf(HEAD_END);
        if (end < 0) {
          if (buffered.length > MAX_HEAD_BYTES) settle(new Error(`proxy ${label} sent more than ${MAX_HEAD_BYTES} bytes without ending its answer to CONNECT ${address}: is it an HTTP-CONNECT proxy?`));
          return;
        }
        const head = parseResponseHead(buffered.subarray(0, end).toString('latin1'));
        if (!head) {
          const first = buffered.subarray(0, Math.min(end, 80)).toString('latin1').split('\r\n')[0];
          settle(new Error(`proxy ${label} answered CONNECT ${address} with something that is not HTTP ("${first}"): is it an HTTP-CONNECT proxy?`));
          return;
        }
        response = head;
        buffered = buffered.subarray(end + HEAD_END.length);
        if (response.statusCode === 200) {
          settle(undefined);
          return;
        }
      }
      if (errorBodyComplete(response, buffered)) refuse();
    };
    /** The proxy hung up: after an error status that ends the body; before any answer it is a failure. */
    const onEnd = () => {
      if (response) refuse();
      else settle(new Error(closedWithoutAnswer(label, address, phase, proxy.path === undefined)));
    };
    const onError = (err: Error) => {
      if (response) refuse();
      else settle(describeConnectionError(err, label, address, phase));
    };
    const onAbort = () => settle(cancelled(label, address));
    const timer = setTimeout(() => {
      settle(new Error(`no answer from proxy ${label} to CONNECT ${address} within ${timeoutMs} ms: ${PHASES[phase].stuck}`));
    }, timeoutMs);

    options.signal?.addEventListener('abort', onAbort, { once: true });
    socket.once(proxy.path ? 'connect' : 'secureConnect', onConnected);
    if (!proxy.path) socket.once('connect', () => { phase = 'tls'; });
    socket.on('readable', onReadable).on('end', onEnd).on('close', onEnd).on('error', onError);
  });
}

interface ResponseHead {
  statusCode: number;
  statusMessage: string;
  contentLength?: number;
}

/**
 * One SecureContext per certificate set: building it parses keys and certificates, which
 * costs more than the handshake itself on a busy dialer. A rotated set is a new object.
 */
const secureContexts = new WeakMap<TlsMaterial, tls.SecureContext>();

function secureContextFor(material: TlsMaterial): tls.SecureContext {
  let context = secureContexts.get(material);
  if (!context) {
    context = tls.createSecureContext({ key: material.key, cert: material.cert, ca: material.ca });
    secureContexts.set(material, context);
  }
  return context;
}

/**
 * What each proxy made of TLS sessions, per certificate set (a rotated set starts without):
 * the session the next connections offer, or that the proxy declined the last one. Offering
 * a session and taking new ones is not free: Node decodes the offered session (certificates
 * included) for every connection and encodes every ticket it is given, which cost this client
 * about 1 ms per connection here. So one session is taken and offered for up to
 * SESSION_REUSE_MS, a new one only when it is older or the proxy did not resume it, and a
 * proxy that declined one is offered none for as long (most do not resume: kube-apiserver's
 * clients never ask, and tunnel-server resumes only with --tls-resumption).
 */
const sessions = new WeakMap<TlsMaterial, Map<string, { session?: Buffer; at: number }>>();
const SESSION_REUSE_MS = 60_000;

function openProxyConnection(proxy: HttpConnectProxy, label: string): net.Socket {
  if (proxy.path) return net.connect({ path: proxy.path });
  if (!proxy.tls) {
    throw new Error(`HTTP-CONNECT to proxy ${label} over TCP needs mTLS: give a client certificate, key and CA, or use the proxy's unix socket`);
  }
  const material = proxy.tls.current();
  const host = proxy.host ?? '127.0.0.1';
  const servername = proxy.servername ?? (net.isIP(host) ? undefined : host);
  let byProxy = proxy.resumeSessions === false ? undefined : sessions.get(material);
  if (proxy.resumeSessions !== false && !byProxy) sessions.set(material, byProxy = new Map<string, { session?: Buffer; at: number }>());
  const known = byProxy?.get(label);
  const fresh = known !== undefined && Date.now() - known.at < SESSION_REUSE_MS;
  const offered = fresh ? known.session : undefined;
  const socket = connectTls({
    host,
    port: proxy.port ?? DEFAULT_SERVER_PORT,
    secureContext: secureContextFor(material),
    servername,
    session: offered,
  });
  if (byProxy && !fresh) {
    socket.once('session', (session: Buffer) => byProxy.set(label, { session, at: Date.now() }));
  } else if (byProxy && offered) {
    // A declined session: none for a while. TLS 1.3 tickets come after the handshake, so
    // there is time to see whether it resumed first.
    socket.once('secureConnect', () => { if (!socket.isSessionReused()) byProxy.set(label, { at: Date.now() }); });
  }
  return socket;
}

function parseResponseHead(head: string): ResponseHead | undefined {
  const status = STATUS_LINE.exec(head);
  if (!status) return undefined;
  const length = CONTENT_LENGTH.exec(head);
  return {
    statusCode: Number(status[1]),
    statusMessage: status[2] ?? '',
    contentLength: length ? Number(length[1]) : undefined,
  };
}

/** Without Content-Length the body ends when the proxy closes (it sends `Connection: close`). */
function errorBodyComplete(response: ResponseHead, buffered: Buffer): boolean {
  return buffered.length >= Math.min(response.contentLength ?? Number.POSITIVE_INFINITY, MAX_ERROR_BODY_BYTES);
}

function errorBody(response: ResponseHead, buffered: Buffer): Buffer {
  return buffered.subarray(0, Math.min(response.contentLength ?? buffered.length, MAX_ERROR_BODY_BYTES));
}

/**
 * A TLS 1.3 server that rejects the client certificate does so after the client's handshake
 * is complete, and often just closes: the client sees no alert, so say what it likely means.
 */
function closedWithoutAnswer(label: string, address: string, phase: Phase, overTls: boolean): string {
  const text = `proxy ${label} closed the connection ${PHASES[phase].during} (dialing ${address})`;
  if (!overTls || phase === 'connect') return text;
  return `${text}: it may have rejected the TLS client certificate; check that the certificate is signed by a CA the proxy trusts and has not expired`;
}

function cancelled(label: string, address: string): Error {
  return new Error(`CONNECT ${address} through proxy ${label} was cancelled`);
}

/** Turns socket and TLS errors into one line that says what to check. */
function describeConnectionError(err: NodeJS.ErrnoException & { reason?: string }, label: string, address: string, phase: Phase): Error {
  const code = err.code ?? '';
  // OpenSSL messages carry source paths; their `reason` is the readable part.
  const reason = err.reason ?? err.message;
  let text: string;
  if (code === 'ECONNREFUSED') {
    text = `cannot connect to proxy ${label}: connection refused; is the tunnel server running and listening there?`;
  } else if (code === 'ENOENT') {
    text = `cannot connect to proxy ${label}: the unix socket does not exist; is the tunnel server running and listening on it?`;
  } else if (code === 'EACCES') {
    text = `cannot connect to proxy ${label}: permission denied on the unix socket; run as a user that may use it`;
  } else if (/ALERT/.test(code)) {
    text = `proxy ${label} refused the TLS handshake (${reason}): use a client certificate that is signed by a CA the proxy trusts and has not expired`;
  } else if (code.startsWith('ERR_TLS_') || /CERT|SIGNATURE|VERIFY/.test(code)) {
    text = `cannot verify the certificate of proxy ${label}: ${reason} (${code}); check that the CA bundle signs the proxy's certificate and that the certificate names the host you connect to`;
  } else {
    text = `connection to proxy ${label} failed ${PHASES[phase].during}: ${reason}`;
  }
  return new Error(`${text} (dialing ${address})`, { cause: err });
}
