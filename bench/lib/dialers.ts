/**
 * One way to open a connection to the target per path under test, all with the same shape,
 * so a measurement does not care whether it runs direct, through a relay or through the tunnel.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { TlsSource } from '../../lib/pki/tls-source.js';
import type { Duplex } from 'node:stream';
import { dialHttpConnect } from '../../lib/client/http-connect-dialer.js';
import { dialGrpc } from '../../lib/client/grpc-dialer.js';
import { inCluster, type Tunnel } from './tunnel.js';
import type { Helper } from './helpers.js';

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

/** Plain TCP to 127.0.0.1:port: the target itself, or a relay in front of it (`via`). */
export function tcpDialer(label: string, target: Helper, via?: Helper): Dialer {
  const port = via?.port ?? target.port;
  return {
    label,
    pids: { client: process.pid, ...(via ? { [via.name]: via.pid } : {}), target: target.pid },
    dial: () => new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      const timer = setTimeout(() => { socket.destroy(); reject(new Error(`connecting to 127.0.0.1:${port} timed out`)); }, DIAL_TIMEOUT_MS);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.off('error', reject);
        socket.setNoDelay(true);
        resolve(socket);
      });
      socket.once('error', (err) => { clearTimeout(timer); reject(err); });
    }),
  };
}

/** Mutual TLS to a TLS-terminating relay (a full handshake per dial), with the client's certificate. */
export function tlsDialer(label: string, target: Helper, relay: Helper, clientTls: TlsSource): Dialer {
  const { key, cert, ca } = clientTls.current();
  const secureContext = tls.createSecureContext({ key, cert, ca });
  return {
    label,
    pids: { client: process.pid, [relay.name]: relay.pid, target: target.pid },
    dial: () => new Promise((resolve, reject) => {
      const socket = tls.connect({ host: '127.0.0.1', port: relay.port, secureContext, servername: 'localhost' });
      const timer = setTimeout(() => { socket.destroy(); reject(new Error(`TLS to 127.0.0.1:${relay.port} timed out`)); }, DIAL_TIMEOUT_MS);
      socket.once('secureConnect', () => {
        clearTimeout(timer);
        socket.off('error', reject);
        socket.setNoDelay(true);
        resolve(socket);
      });
      socket.once('error', (err) => { clearTimeout(timer); reject(err); });
    }),
  };
}

/** Through the tunnel server's HTTP-CONNECT frontend (mTLS, a full handshake per dial). */
export function httpConnectDialer(tunnel: Tunnel, target: Helper, label = 'HTTP-CONNECT'): Dialer {
  return {
    label,
    pids: tunnelPids(tunnel, target),
    dial: async () => {
      const socket = await dialHttpConnect(tunnel.connectProxy, inCluster(target.port), { timeoutMs: DIAL_TIMEOUT_MS });
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
