/**
 * `host:port` as dial addresses and error messages write it, with IPv6 hosts in brackets
 * (`[::1]:443`), the form the proxies split on.
 */
import { isIPv6 } from 'node:net';

export function joinHostPort(host: string, port: number | string): string {
  return isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}
