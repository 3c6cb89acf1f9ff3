/**
 * Dials the targets named in DIAL_REQ, on the agent's side of the tunnel, with a timeout.
 * Failures are reported in the words of Go's net.Dial, as the reference agent reports them,
 * since clients (and the server's HTTP status mapping) match on them.
 */
import net, { isIP } from 'node:net';
import dns from 'node:dns';
import { splitHostPort } from '../transport/host-port.js';
import { DialNotAllowedError, type DialAllowList } from './dial-allow-list.js';

export const DEFAULT_TARGET_DIAL_TIMEOUT_MS = 5_000;

/** A target that did not answer the connect within the dial timeout. */
export class TargetDialTimeoutError extends Error {
  override name = 'TargetDialTimeoutError';
  readonly code = 'ETIMEDOUT';
}

export interface TargetDialerOptions {
  timeoutMs?: number;
  /** Static name -> address overrides consulted before DNS (like curl --resolve). */
  hostAliases?: ReadonlyMap<string, string>;
  /** Which targets may be dialed (default: all). */
  allow?: DialAllowList;
  /** TCP keepalive of target sockets, ms after the last packet (0 or absent: off). */
  keepAliveMs?: number;
  /** Called with each connected target socket (e.g. to watch it for idleness). */
  onConnected?: (socket: net.Socket, address: string) => void;
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
    const allow = options.allow;
    let socket: net.Socket | undefined;
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      cleanup();
      socket?.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new TargetDialTimeoutError(`dial tcp ${address}: i/o timeout`)), timeoutMs);
    const onAbort = () => fail(new Error(`dial tcp ${address}: operation was canceled`));
    const onError = (err: NodeJS.ErrnoException) => {
      const text = goErrorText(address, target.host, err);
      fail(err.code === 'ETIMEDOUT' ? new TargetDialTimeoutError(text) : new Error(text));
    };
    const onConnect = () => {
      if (settled) return;
      settled = true;
      cleanup();
      socket!.setNoDelay(true);
      if (options.keepAliveMs) socket!.setKeepAlive(true, options.keepAliveMs);
      options.onConnected?.(socket!, address);
      resolve(socket!);
    };
    const cleanup = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      socket?.off('error', onError);
      socket?.off('connect', onConnect);
    };
    const connect = (host: string) => {
      socket = net.connect({
        host,
        port: target.port,
        lookup: (hostname, opts, callback) => dns.lookup(hostname, opts, callback),
      });
      socket.once('error', onError);
      socket.once('connect', onConnect);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    if (!allow || allow.allowsName(target.host, target.port)) {
      connect(alias ?? target.host);
      return;
    }
    const notAllowed = (detail = '') => fail(new DialNotAllowedError(`dial tcp ${address}: not allowed by this agent's --allow-dial list${detail}`));
    if (!allow.hasAddressRules(target.port)) {
      notAllowed();
      return;
    }
    // An address entry is checked against the address the agent connects to: resolve,
    // check, then connect to that very address (a second lookup could answer otherwise).
    const host = alias ?? target.host;
    const lookup = isIP(host) !== 0 ? Promise.resolve([{ address: host }]) : dns.promises.lookup(host, { all: true });
    lookup.then((addresses) => {
      if (settled) return;
      const allowed = addresses.find((a) => allow.allowsAddress(a.address, target.port));
      if (allowed) connect(allowed.address);
      else notAllowed(` (${target.host} is ${addresses.map((a) => a.address).join(', ')}, in no allowed network)`);
    }, (err: NodeJS.ErrnoException) => onError(err));
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
