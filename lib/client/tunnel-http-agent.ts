/**
 * http.Agent and https.Agent whose connections go through the tunnel, for node:http(s)
 * requests and for libraries that take an agent (@kubernetes/client-node, node-fetch). The
 * request's host and port become the dial address, e.g. `https://c1:6443/` dials `c1:6443`,
 * which the tunnel server routes to the agent of cluster c1.
 */
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { joinHostPort } from '../transport/host-port.js';
import { connectTls } from '../transport/tls-dial.js';
import { TunnelSocket } from './tunnel-socket.js';

const HTTP_PORT = 80;
const HTTPS_PORT = 443;

/** Opens one tunneled connection to `host:port`. */
export type TunnelDial = (address: string) => Promise<Duplex>;

type ConnectionCallback = (err: Error | null, socket: Duplex) => void;

export class TunnelHttpAgent extends http.Agent {
  private readonly dial: TunnelDial;

  constructor(dial: TunnelDial, options?: http.AgentOptions) {
    super(options);
    this.dial = dial;
  }

  override createConnection(options: http.ClientRequestArgs, callback?: ConnectionCallback): undefined {
    this.dial(dialAddress(options, HTTP_PORT)).then(
      (stream) => callback?.(null, asSocket(stream)),
      (err: Error) => callback?.(err, undefined as never),
    );
    return undefined;
  }
}

/**
 * TLS to the target runs inside the tunnel, end to end: the tunnel only sees ciphertext. The
 * request's servername, ca, cert, key and rejectUnauthorized apply to the target. The TLS
 * socket is a net.Socket and destroys the tunneled stream when it closes.
 */
export class TunnelHttpsAgent extends https.Agent {
  private readonly dial: TunnelDial;

  constructor(dial: TunnelDial, options?: https.AgentOptions) {
    super(options);
    this.dial = dial;
  }

  override createConnection(options: https.RequestOptions, callback?: ConnectionCallback): undefined {
    this.dial(dialAddress(options, HTTPS_PORT)).then(
      (stream) => callback?.(null, connectTls({ ...(options as tls.ConnectionOptions), socket: stream })),
      (err: Error) => callback?.(err, undefined as never),
    );
    return undefined;
  }
}

function dialAddress(options: http.ClientRequestArgs, defaultPort: number): string {
  const host = options.host ?? options.hostname ?? 'localhost';
  return joinHostPort(host, options.port ?? options.defaultPort ?? defaultPort);
}

/** A real socket (HTTP-CONNECT dials) is used as it is; a TunnelConnection gets socket methods. */
function asSocket(stream: Duplex): Duplex {
  return stream instanceof net.Socket ? stream : new TunnelSocket(stream);
}
