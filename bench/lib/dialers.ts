/**
 * One way to open a connection to the target per path under test, all with the same shape,
 * so a measurement does not care whether it runs direct, through a relay or through the tunnel.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { TlsSource } from '../../lib/pki/tls-source.js';
import type { Duplex } from 'node:stream';
import { dialHttpConnect, type HttpConnectProxy } from '../../lib/client/http-connect-dialer.js';
import { dialGrpc } from '../../lib/client/grpc-dialer.js';
import { connectTls } from '../../lib/transport/tls-dial.js';
import { inCluster, type Tunnel } from './tunnel.js';
import type { Helper } from './helpers.js';
import type { ReferenceTunnel } from './reference.js';

/** A connection to a target, whatever the path. */
export type Conn = Duplex & { setNoDelay?(noDelay?: boolean): unknown };

export interface Dialer {
  /** Names the path in figures and progress lines. */
  label: string;
  /** The processes a connection on this path goes through (for CPU accounting), by role. */
  pids: Record<string, number>;
  dial(): Promise<Conn>;
}

const DIAL_TIMEOUT_MS = 30_000;

/** The socket once `event` says it is ready (without Nagle), or the error or a timeout. */
function opened(socket: net.Socket, event: 'connect' | 'secureConnect', what: string): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`${what} timed out`)); }, DIAL_TIMEOUT_MS);
    const onError = (err: Error) => { clearTimeout(timer); reject(err); };
    socket.once('error', onError);
    socket.once(event, () => {
      clearTimeout(timer);
      socket.off('error', onError);
      socket.setNoDelay(true);
      resolve(socket);
    });
  });
}

/** Plain TCP to 127.0.0.1:port: the target itself, or a relay in front of it (`via`). */
export function tcpDialer(label: string, target: Helper, via?: Helper): Dialer {
  const port = via?.port ?? target.port;
  return {
    label,
    pids: { client: process.pid, ...(via ? { [via.name]: via.pid } : {}), target: target.pid },
    dial: () => opened(net.connect({ host: '127.0.0.1', port }), 'connect', `connecting to 127.0.0.1:${port}`),
  };
}

/**
 * Mutual TLS to a TLS-terminating relay (a full handshake per dial), with the client's
 * certificate, through the same TLS client code as the tunnel's dialers.
 */
export function tlsDialer(label: string, target: Helper, relay: Helper, clientTls: TlsSource): Dialer {
  const { key, cert, ca } = clientTls.current();
  const secureContext = tls.createSecureContext({ key, cert, ca });
  return {
    label,
    pids: { client: process.pid, [relay.name]: relay.pid, target: target.pid },
    dial: () => opened(
      connectTls({ host: '127.0.0.1', port: relay.port, secureContext, servername: 'localhost' }),
      'secureConnect',
      `TLS to 127.0.0.1:${relay.port}`,
    ),
  };
}

/** Through the tunnel server's HTTP-CONNECT frontend (mTLS, a full handshake per dial). */
export function httpConnectDialer(tunnel: Tunnel, target: Helper, label = 'HTTP-CONNECT', options: { resumeSessions?: boolean } = {}): Dialer {
  return connectDialer(label, tunnelPids(tunnel, target), { ...tunnel.connectProxy, ...options }, inCluster(target.port));
}

/**
 * Through the reference server's HTTP-CONNECT frontend (mTLS, the same client certificate),
 * to the target by its address: the reference agent dials what it is asked for.
 */
export function referenceConnectDialer(reference: ReferenceTunnel, target: Helper, clientTls: TlsSource, label: string, options: { resumeSessions: boolean }): Dialer {
  const proxy = { host: '127.0.0.1', port: reference.connectPort, tls: clientTls, servername: 'localhost', resumeSessions: options.resumeSessions };
  const pids = { client: process.pid, server: reference.serverPid, agent: reference.agentPid, target: target.pid };
  return connectDialer(label, pids, proxy, `127.0.0.1:${target.port}`);
}

/** CONNECT `address` through `proxy`, without Nagle once it answered. */
function connectDialer(label: string, pids: Record<string, number>, proxy: HttpConnectProxy, address: string): Dialer {
  return {
    label,
    pids,
    dial: async () => {
      const socket = await dialHttpConnect(proxy, address, { timeoutMs: DIAL_TIMEOUT_MS });
      socket.setNoDelay(true);
      return socket;
    },
  };
}

/** Through the tunnel server's gRPC frontend on its unix socket (a stream per dial). */
export function grpcDialer(tunnel: Tunnel, target: Helper, label = 'gRPC (uds)'): Dialer {
  return {
    label,
    pids: tunnelPids(tunnel, target),
    dial: () => dialGrpc(tunnel.grpcProxy, inCluster(target.port), { timeoutMs: DIAL_TIMEOUT_MS }),
  };
}

function tunnelPids(tunnel: Tunnel, target: Helper): Record<string, number> {
  return { client: process.pid, server: tunnel.server.pid, agent: tunnel.agent.pid, target: target.pid };
}
