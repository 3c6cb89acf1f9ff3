/**
 * One HTTP(S) GET through one tunneled connection: what tunnel-client does to prove a tunnel
 * works end to end. Failures say whether the tunnel or the target failed.
 */
import http from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import { TunnelHttpAgent, TunnelHttpsAgent, type TunnelDial } from './tunnel-http-agent.js';

export interface TunnelGetOptions {
  dial: TunnelDial;
  url: URL;
  /** CA bundle to verify an https target with. */
  ca?: Buffer;
  /** Verify an https target's certificate (default true). */
  rejectUnauthorized?: boolean;
  /** Longest silence from the target once the tunnel is open. */
  timeoutMs?: number;
}

export interface TunnelResponse {
  statusCode: number;
  statusMessage: string;
  body: Buffer;
}

const TLS_VERIFY_CODE = /CERT|SIGNATURE|VERIFY|^ERR_TLS_/;

/** Rejects with the dial's own error when the tunnel fails, or with one naming the target. */
export function getThroughTunnel(options: TunnelGetOptions): Promise<TunnelResponse> {
  const { url, timeoutMs } = options;
  let dialError: unknown;
  const dial = (address: string): Promise<Duplex> => options.dial(address).catch((err: unknown) => {
    dialError = err;
    throw err;
  });
  const secure = url.protocol === 'https:';
  const agent = secure ? new TunnelHttpsAgent(dial) : new TunnelHttpAgent(dial);
  const request = secure ? https.request : http.request;
  return new Promise<TunnelResponse>((resolve, reject) => {
    const req = request(url, { agent, ca: options.ca, rejectUnauthorized: options.rejectUnauthorized, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ statusCode: res.statusCode ?? 0, statusMessage: res.statusMessage ?? '', body: Buffer.concat(chunks) }));
      res.on('error', (err) => reject(new Error(`${url.origin} broke off its response through the tunnel: ${err.message}`)));
    });
    req.on('timeout', () => req.destroy(new Error(`no response from ${url.origin} within ${timeoutMs} ms through the tunnel`)));
    req.on('error', (err) => reject(err === dialError ? err : targetError(url, err)));
    req.end();
  }).finally(() => agent.destroy());
}

function targetError(url: URL, err: NodeJS.ErrnoException): Error {
  const code = err.code ?? '';
  const text = TLS_VERIFY_CODE.test(code)
    ? `the certificate of ${url.origin} did not verify: ${err.message} (${code}); give the CA bundle that signs it`
    : `${url.origin} through the tunnel: ${err.message}`;
  return new Error(text, { cause: err });
}
