/**
 * Dials the targets named in DIAL_REQ, on the agent's side of the tunnel, with a timeout.
 * Failures are reported in the words of Go's net.Dial, as the reference agent reports them,
 * since clients (and the server's HTTP status mapping) match on them.
 */
import net from 'node:net';
import dns from 'node:dns';
import { splitHostPort } from '../transport/host-port.js';

export const DEFAULT_TARGET_DIAL_TIMEOUT_MS = 5_000;

export interface TargetDialerOptions {
  timeoutMs?: number;
  /** Static name -> address overrides consulted before DNS (like curl --resolve). */
  hostAliases?: ReadonlyMap<string, string>;
}

function goErrorText(address: string, host: string, err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'ECONNREFUSED': return `dial tcp ${address}: connect: connection refused`;
    case 'ECONNRESET': return `dial tcp ${address}: connect: connection reset by peer`;
    case 'EHOSTUNREACH': return `dial tcp ${address}: connect: no route to host`;
    case 'ENETUNREACH': return `dial tcp ${address}: connect: network is unreachable`;
    case 'ENOTFOUND':
    case 'EAI_NONAME':
    case 'EAI_AGAIN': return `dial tcp: lookup ${host}: no such host`;
    case 'EMFILE':
    case 'ENFILE': return `dial tcp ${address}: socket: too many open files`;
    case 'ETIMEDOUT': return `dial tcp ${address}: i/o timeout`;
    default: return `dial tcp ${address}: ${err.message}`;
  }
}

export function dialTarget(address: string, signal: AbortSignal, options: TargetDialerOptions = {}): Promise<net.Socket> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TARGET_DIAL_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const target = splitHostPort(address);
    if (!target) {
      reject(new Error(`dial tcp ${address}: address ${address}: missing port in address`));
      return;
    }
    const alias = options.hostAliases?.get(target.host);
    const socket = net.connect({
      host: alias ?? target.host,
      port: target.port,
      lookup: (hostname, opts, callback) => dns.lookup(hostname, opts, callback),
    });
    const fail = (text: string) => {
      cleanup();
      socket.destroy();
      reject(new Error(text));
    };
    const timer = setTimeout(() => fail(`dial tcp ${address}: i/o timeout`), timeoutMs);
    const onAbort = () => fail(`dial tcp ${address}: operation was canceled`);
    const onError = (err: NodeJS.ErrnoException) => fail(goErrorText(address, target.host, err));
    const onConnect = () => {
      cleanup();
      socket.setNoDelay(true);
      resolve(socket);
    };
    const cleanup = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      socket.off('error', onError);
      socket.off('connect', onConnect);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('error', onError);
    socket.once('connect', onConnect);
  });
}

/** Parses repeated `--host-alias NAME=ADDRESS` flags. */
export function parseHostAliases(values: string[]): Map<string, string> {
  const aliases = new Map<string, string>();
  for (const value of values) {
    const [name, address, ...rest] = value.split('=');
    if (!name || !address || rest.length > 0) throw new Error(`--host-alias=${value} is not NAME=ADDRESS (e.g. --host-alias=my-cluster=127.0.0.1)`);
    aliases.set(name, address);
  }
  return aliases;
}
