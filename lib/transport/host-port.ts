/**
 * `host:port` as dial addresses and error messages write it, with IPv6 hosts in brackets
 * (`[::1]:443`), the form the proxies split on.
 */
import { isIPv6 } from 'node:net';

export function joinHostPort(host: string, port: number | string): string {
  return isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The host (without brackets) and port of `host:port` or `[v6]:port`, or undefined when it is neither. */
export function splitHostPort(address: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(address);
  const port = match ? Number(match[3]) : NaN;
  return match && port <= 65535 ? { host: match[1] ?? match[2], port } : undefined;
}
