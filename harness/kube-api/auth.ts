/**
 * Authentication as kube-apiserver's union of authenticators runs it: a client certificate
 * verified against the client CA (CN is the user, O entries the groups) wins; otherwise a
 * bearer token, either a static one (like --token-auth-file) or a ServiceAccount token from
 * TokenRequest. Static tokens are audience-agnostic: valid only for the API server's own
 * audiences. Anonymous requests are refused (--anonymous-auth=false).
 */
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { API_AUDIENCES, type ServiceAccountTokens } from './service-account-tokens.js';
import { withAuthenticatedGroup, type UserInfo } from './user.js';

const OID_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const OID_ANY_EXTENDED_KEY_USAGE = '2.5.29.37.0';
/** bearertoken.invalidToken: the error when no token authenticator recognizes the token. */
export const INVALID_BEARER_TOKEN = 'invalid bearer token';

export type TokenReviewResult = { user?: UserInfo; audiences?: string[]; authenticated: boolean; error?: string };

export class Authenticator {
  private readonly tokens = new Map<string, UserInfo>();

  constructor(private readonly serviceAccountTokens: ServiceAccountTokens) {}

  addToken(token: string, user: UserInfo): void {
    this.tokens.set(token, { ...user });
  }

  /** The user of a request, or undefined (401). */
  authenticateRequest(req: IncomingMessage, now: Date): UserInfo | undefined {
    const fromCertificate = certificateUser(req.socket as TLSSocket);
    if (fromCertificate) return withAuthenticatedGroup(fromCertificate);
    const token = bearerToken(req.headers.authorization);
    if (token === undefined) return undefined;
    const result = this.authenticateToken(token, API_AUDIENCES, now);
    return result.authenticated && result.user ? result.user : undefined;
  }

  /** What TokenReview reports for a token and the audiences it is wanted for. */
  authenticateToken(token: string, audiences: readonly string[], now: Date): TokenReviewResult {
    const staticUser = this.tokens.get(token);
    if (staticUser) {
      const granted = API_AUDIENCES.filter((a) => audiences.includes(a));
      if (granted.length === 0) return { authenticated: false, error: INVALID_BEARER_TOKEN };
      return { authenticated: true, user: withAuthenticatedGroup(staticUser), audiences: granted };
    }
    const result = this.serviceAccountTokens.authenticate(token, audiences, now);
    switch (result.kind) {
      case 'authenticated':
        return { authenticated: true, user: result.user, audiences: result.audiences };
      case 'rejected':
        return { authenticated: false, error: `[${INVALID_BEARER_TOKEN}, ${result.error}]` };
      case 'unknown':
        return { authenticated: false, error: INVALID_BEARER_TOKEN };
    }
  }
}

/** "Bearer <token>"; anything else (no header, Basic, an empty token) carries no token. */
function bearerToken(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const [scheme, token] = header.trim().split(/\s+/, 2);
  if (scheme.toLowerCase() !== 'bearer' || !token) return undefined;
  return token;
}

/** The user of a client certificate that chains to the client CA and may be used for client auth. */
function certificateUser(socket: TLSSocket): UserInfo | undefined {
  if (typeof socket.getPeerCertificate !== 'function' || !socket.authorized) return undefined;
  const peer = socket.getPeerCertificate();
  if (!peer.raw) return undefined;
  const usages = new X509Certificate(peer.raw).keyUsage as string[] | undefined;
  if (usages && !usages.includes(OID_CLIENT_AUTH) && !usages.includes(OID_ANY_EXTENDED_KEY_USAGE)) return undefined;
  const cn: string | string[] | undefined = peer.subject.CN;
  const o: string | string[] | undefined = peer.subject.O;
  const username = Array.isArray(cn) ? cn[0] : cn;
  if (!username) return undefined;
  return { username, groups: o === undefined ? [] : Array.isArray(o) ? o : [o] };
}
